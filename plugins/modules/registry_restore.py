#!/usr/bin/python
# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: put back the exact objects a garbage collection took from a registry's storage."""

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_restore
short_description: Restore the manifests and blobs a broken image lacks, from a backup or another registry, digests unchanged
version_added: 0.1.0
description:
  - Runs on the registry host, like M(selfhosted.registry.registry_orphan_scan). For each image it follows the tag
    through the registry's filesystem storage and lists exactly what the registry cannot serve, manifest and blob
    data, and the repository links without which the registry answers 404 although the bytes are there (the
    C(garbage-collect --delete-untagged) incident leaves the child manifests' bytes and removes their links).
  - Each missing object is taken from the first of O(sources) that has it, a copy of the storage tree (a backup, a
    snapshot) or another registry over its API, and is used only if its bytes hash to the digest the parent manifest
    names. Blobs go in before the manifests that name them, children before their index; nothing that exists is
    overwritten and tag links are never changed, so the image keeps its digests, and signatures and pins made for
    them stay valid.
  - What no source has is listed in RV(rebuild), in the form the rebuild playbooks take.
  - Files are placed only while the registry is stopped or read-only, the same rule as the GC guard
    (M(selfhosted.registry.registry_garbage_collect)), under the host-wide lock. O(after_command) runs whenever
    O(before_command) ran, whatever happened in between, SIGTERM and SIGHUP included.
author:
  - selfhosted.registry maintainers (@selfhosted-registry)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - selfhosted.registry.host_lock
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - Reads and hashes every object it would restore (so a corrupt backup is refused in check mode too), writes
        nothing and runs no command.
  diff_mode:
    support: full
    details:
      - The diff lists every storage path placed (or, in check mode, that would be), with the bytes and the source.
  idempotent:
    description:
      - Whether running the module twice on the same state gives the same result without changing anything.
    support: full
    details:
      - A second run finds nothing missing and reports C(changed=false) without running any command.
options:
  storage_root:
    description:
      - The registry's C(storage.filesystem.rootdirectory) on this host, or its C(docker/registry/v2) directory.
    type: path
    required: true
  images:
    description:
      - The images to restore, C(repository:tag) or C(repository@sha256:...), as the diagnose playbook's
        C(registry_images) and the verdicts name them. A host prefix is accepted when it is O(registry_host).
      - Empty means every tag the storage scan finds broken (C(broken_tags) of M(selfhosted.registry.registry_orphan_scan)).
    type: list
    elements: str
    default: []
  registry_host:
    description:
      - The registry's C(host[:port]) as image references name it, so C(registry.example:5000/app:1) is accepted.
    type: str
  sources:
    description:
      - Where missing objects are taken from, tried in this order for each object. Give O(sources[].path) for a copy
        of the storage tree on this host, or O(sources[].registry_url) for another registry, which is asked for the
        object in the same repository.
      - Without sources, only links whose data is still in the storage are restored (often all the incident needs for
        the child manifests), and everything else is listed for a rebuild.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description:
          - A copy of the storage tree (its root directory or its C(docker/registry/v2) directory). Read only;
            symbolic links are never followed.
        type: path
      registry_url:
        description: Another registry (a replica, another region, a mirror that holds the same image).
        type: str
      username:
        description: User name for O(sources[].registry_url).
        type: str
      password:
        description: Password or token for O(sources[].registry_url). Never shown in results or errors.
        type: str
      validate_certs:
        description: Verify the TLS certificate of O(sources[].registry_url).
        type: bool
        default: true
      ca_path:
        description: CA bundle for O(sources[].registry_url).
        type: path
      timeout:
        description: Seconds one request to O(sources[].registry_url) may take, a whole blob included.
        type: int
        default: 300
  before_command:
    description:
      - Command (argument list, no shell) run before the first file is placed, to stop the registry or switch it to
        read-only (C(storage.maintenance.readonly.enabled)). Not run in check mode, nor when nothing is missing.
    type: list
    elements: str
    default: []
  after_command:
    description:
      - Command (argument list, no shell) run after the placing whatever happened, to start or restart the registry.
        A running registry caches blob descriptors, so restart it even when it was only read-only.
    type: list
    elements: str
    default: []
  registry_offline:
    description:
      - Say that the registry is stopped or read-only for the whole run although no O(before_command) makes it so.
        Without either, a run that would place files fails and places nothing.
    type: bool
    default: false
  timeout:
    description: Seconds O(before_command) and O(after_command) may each take.
    type: int
    default: 600
  report_path:
    description: Write the outcome as JSON to this file (atomically). Written in check mode too.
    type: path
notes:
  - After a restore, verify the images end to end reading their blobs (M(selfhosted.registry.registry_manifest_verify)
    with O(selfhosted.registry.registry_manifest_verify#module:blob_check=read)); C(playbooks/restore.yml) does that and
    runs the probe.
  - A registry source needs the Python library C(requests) on the host the module runs on, as the registry client does.
seealso:
  - module: selfhosted.registry.registry_orphan_scan
  - module: selfhosted.registry.registry_garbage_collect
"""

EXAMPLES = r"""
- name: What would come back from last night's backup (check mode reads and hashes, writes nothing)
  selfhosted.registry.registry_restore:
    storage_root: /srv/registry/data
    images: [infra-ci:latest]
    sources:
      - path: /srv/backup/registry/data
  check_mode: true

- name: Restore from the backup, then from the replica, with the registry stopped while files are placed
  selfhosted.registry.registry_restore:
    storage_root: /srv/registry/data
    images: "{{ registry_images }}"
    sources:
      - path: /srv/backup/registry/data
      - registry_url: https://replica.example:5000
        username: restore
        password: "{{ replica_password }}"
    before_command: [docker, compose, -f, /opt/registry/compose.yml, stop, registry]
    after_command: [docker, compose, -f, /opt/registry/compose.yml, start, registry]
  register: restore

- name: Rebuild what no source had
  ansible.builtin.debug:
    msg: "ansible-playbook playbooks/rebuild_ci.yml -e registry_images={{ restore.rebuild | join(',') }}"
  when: restore.rebuild | length > 0
"""

RETURN = r"""
images:
  description: >-
    One entry per image. C(status) is C(complete) (nothing was missing), C(restored), C(would_restore) (check mode),
    C(rebuild) (some object no source had; listed in RV(rebuild)) or C(not_found) (the storage has no such tag, or its
    link cannot be read; never listed in RV(rebuild), so a mistyped name never starts one).
    C(digest) is the image's top manifest digest, the same before and after. C(objects) are the digests of the
    missing objects it needed.
  returned: always
  type: list
  elements: dict
  sample:
    - reference: "infra-ci:latest"
      repository: infra-ci
      digest: "sha256:1879..."
      status: restored
      message: "9 objects, digest sha256:1879... unchanged"
      objects: ["sha256:78b6..."]
objects:
  description: >-
    Every missing object once, in the order placed (blobs before the manifests that name them). C(missing) is
    C(data) (bytes and link) or C(link) (the bytes are in the storage). C(action) is C(restored), C(linked),
    C(would_restore), C(would_link), C(unavailable) (no source had right bytes; C(problems) says why for each) or
    C(not_placed) (something it names could not be restored). C(source) names where the bytes came from and
    C(size) their length.
  returned: always
  type: list
  elements: dict
  sample:
    - repository: infra-ci
      digest: "sha256:78b6..."
      kind: blob
      role: layer
      missing: data
      parent: "sha256:2e11..."
      action: restored
      source: backup /srv/backup/registry/data
      size: 31457280
      problems: []
rebuild:
  description: The images no source could make whole, as C(repository:tag), ready for the rebuild playbooks' C(registry_images).
  returned: always
  type: list
  elements: str
  sample: ["infra-ci:latest"]
summary:
  description: Objects per action, C(bytes) restored (or that would be), and images per status (C(images_<status>)).
  returned: always
  type: dict
  sample: {restored: 7, linked: 4, would_restore: 0, would_link: 0, unavailable: 0, not_placed: 0, bytes: 31462021,
           images_complete: 0, images_restored: 1, images_would_restore: 0, images_rebuild: 0, images_not_found: 0}
commands:
  description: The before and after commands run, as argument lists.
  returned: always
  type: list
  elements: list
  sample: [[docker, compose, stop, registry], [docker, compose, start, registry]]
seconds:
  description: How long the restore took.
  returned: always
  type: float
  sample: 1.42
lines:
  description: What a person reads first, one line per image, then one per object that could not be restored.
  returned: always
  type: list
  elements: str
  sample: ["infra-ci:latest: restored - 9 objects, digest sha256:1879... unchanged"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhosted.registry.plugins.module_utils._host_lock_options import HOST_LOCK_ARGUMENT_SPEC
from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import RegistryError
from ansible_collections.selfhosted.registry.plugins.module_utils._registry_options import build_registry_client
from ansible_collections.selfhosted.registry.plugins.module_utils._report_files import write_report_files
from ansible_collections.selfhosted.registry.plugins.module_utils._restore import RestoreError, RestoreOptions, run_restore
from ansible_collections.selfhosted.registry.plugins.module_utils._restore_sources import (
    RegistrySource,
    SourceError,
    StorageSource,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import (
    HostLockError,
    ScanError,
    host_lock,
    scan_storage,
)

SOURCE_SPEC = dict(
    path=dict(type="path"),
    registry_url=dict(type="str"),
    username=dict(type="str"),
    password=dict(type="str", no_log=True),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    timeout=dict(type="int", default=300),
)


def _sources(module: AnsibleModule) -> list:
    sources = []
    for position, spec in enumerate(module.params["sources"], start=1):
        if bool(spec["path"]) == bool(spec["registry_url"]):
            module.fail_json(msg=f"sources[{position}] must give exactly one of path or registry_url")
        try:
            if spec["path"]:
                sources.append(StorageSource(spec["path"]))
            else:
                sources.append(RegistrySource(build_registry_client(spec, pool_size=2)))
        except (SourceError, RegistryError) as error:
            module.fail_json(msg=f"sources[{position}]: {error}")
    return sources


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            storage_root=dict(type="path", required=True),
            images=dict(type="list", elements="str", default=[]),
            registry_host=dict(type="str"),
            sources=dict(type="list", elements="dict", default=[], options=SOURCE_SPEC),
            before_command=dict(type="list", elements="str", default=[]),
            after_command=dict(type="list", elements="str", default=[]),
            registry_offline=dict(type="bool", default=False),
            timeout=dict(type="int", default=600),
            report_path=dict(type="path"),
            **HOST_LOCK_ARGUMENT_SPEC,
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be positive, got {params['timeout']}")
    sources = _sources(module)
    try:
        with host_lock("restore", params["lock_path"] or "", float(params["lock_timeout"])):
            images = params["images"] or sorted(scan_storage(params["storage_root"]).broken_tags)
            options = RestoreOptions(
                storage_root=params["storage_root"],
                images=tuple(images),
                registry_host=params["registry_host"],
                check_mode=module.check_mode,
                before_command=tuple(params["before_command"]),
                after_command=tuple(params["after_command"]),
                registry_offline=params["registry_offline"],
                timeout=float(params["timeout"]),
            )
            outcome = run_restore(options, sources)
    except (RestoreError, ScanError, HostLockError) as error:
        module.fail_json(msg=str(error))
    finally:
        for source in sources:
            close = getattr(source, "close", None)
            if close:
                close()
    report = outcome.as_dict()
    problem = write_report_files(params["report_path"], report, None, [])
    result = dict(report, changed=outcome.changed, lines=outcome.lines())
    result.pop("check_mode")
    failed = result.pop("failed")
    if module._diff:
        result["diff"] = outcome.diff()
    for warning in outcome.warnings:
        module.warn(warning)
    if problem:
        module.fail_json(msg=problem, **result)
    if failed:
        module.fail_json(msg=failed, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: scan a registry's filesystem storage for broken images."""

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_orphan_scan
short_description: Find broken images in a distribution registry's filesystem storage
version_added: 0.1.0
description:
  - Reads the storage tree of a distribution registry (C(registry:2.8.x), filesystem driver) on the
    host it runs on and reports every index whose child manifests are gone (the C(garbage-collect
    --delete-untagged) incident), every image whose config or layers are gone, dangling revisions and
    tags, layer links without data, and corrupt files, each with the tags that reach it.
  - Read-only. Symbolic links are never followed and links that do not hold exactly
    C(sha256:<64 lowercase hex>) are reported, never used as paths.
  - Files that vanish while the scan runs (a push writing, a garbage collection deleting) are
    rechecked and not reported as damage.
  - The same scanner runs on the registry host without Ansible as
    C(python3 -m registry_tools._registry_tools_cli scan), installed by the C(registry_vm) role.
author:
  - selfhosted.registry maintainers (@selfhosted-registry)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - selfhosted.registry.attributes.read_only
  - selfhosted.registry.host_lock
options:
  storage_root:
    description:
      - The registry's C(storage.filesystem.rootdirectory), or its C(docker/registry/v2) directory.
      - An empty directory counts as the empty store of a registry that never stored anything.
    type: path
    required: true
  repositories:
    description:
      - Only scan repositories whose name matches one of these shell patterns (C(team/*), C(infra-ci)).
      - Empty means every repository.
    type: list
    elements: str
    default: []
  min_age:
    description:
      - Objects whose link or file changed less than this many seconds ago are left out of the findings,
        so pushes in progress are not reported.
    type: int
    default: 0
  report_path:
    description:
      - Write the full result as JSON to this file (atomically, so readers never see half a file).
      - When the storage cannot be scanned at all, the file still says so (C(failed=true), C(clean=false), C(error)),
        so a monitor never keeps reading the last good report.
      - Written in check mode too, because the report is the output of the scan, not a change to the registry.
    type: path
  metrics_path:
    description:
      - Write Prometheus samples (C(registry_storage_findings{kind=...}), C(registry_storage_clean), ...)
        to this file for node_exporter's textfile collector; the name must end in C(.prom).
      - C(registry_storage_scan_failed) is 1 (and C(registry_storage_clean) 0) when the storage could not be scanned.
      - Written in check mode too, like O(report_path).
    type: path
  fail_on_findings:
    description:
      - Fail the task when the storage is not clean.
      - Off by default because the scan is a diagnosis, not a gate. A playbook usually goes on to
        report, rebuild or alert with the findings, which a failed task would stop.
    type: bool
    default: false
notes:
  - Layer links without data that no manifest references are what every plain C(garbage-collect) leaves
    behind; they are listed (kind C(orphan_layer_link), C(referenced=false)) but do not make the storage unclean.
seealso:
  - module: selfhosted.registry.registry_garbage_collect
"""

EXAMPLES = r"""
- name: Scan the registry storage
  selfhosted.registry.registry_orphan_scan:
    storage_root: /srv/registry/data
    min_age: 3600
    report_path: /var/lib/registry-tools/scan.json
    metrics_path: /var/lib/node_exporter/textfile/registry_scan.prom
  register: scan

- name: Show the tags that no longer pull
  ansible.builtin.debug:
    msg: "{{ scan.broken_tags }}"
  when: not scan.clean

- name: Gate a deployment on one team's repositories
  selfhosted.registry.registry_orphan_scan:
    storage_root: /srv/registry/data
    repositories:
      - team/*
    fail_on_findings: true
"""

RETURN = r"""
clean:
  description: True when nothing harmful was found (unreferenced layer links without data do not count).
  returned: always
  type: bool
  sample: false
storage_root:
  description: The C(docker/registry/v2) directory that was scanned.
  returned: always
  type: str
  sample: /srv/registry/data/docker/registry/v2
summary:
  description: Number of findings per kind.
  returned: always
  type: dict
  sample:
    orphan_index: 1
    broken_manifest: 0
    dangling_revision: 0
    dangling_tag: 0
    orphan_layer_link: 3
    corrupt_file: 0
counts:
  description: What was scanned.
  returned: always
  type: dict
  sample:
    repositories: 12
    revisions: 480
    tags: 96
    manifests_read: 480
    skipped_recent: 0
    dropped_on_recheck: 0
    duration_seconds: 0.412
findings:
  description: One flat dict per problem, sorted as found (repository by repository).
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: One of C(orphan_index), C(broken_manifest), C(dangling_revision), C(dangling_tag),
        C(orphan_layer_link), C(corrupt_file).
      type: str
      sample: orphan_index
    repository:
      description: Repository name; empty for corrupt files outside any repository.
      type: str
      sample: infra-ci
    digest:
      description: Digest of the manifest (or layer, or tag target) the finding is about; empty for a corrupt file that is not one.
      type: str
      sample: sha256:1879a69d6c6f02b068715023c37c262ee680235f7f8a53d41b4d6f8bddc95219
    media_type:
      description: Media type read from the manifest JSON (for a layer link, from the manifest that references it); empty when unknown.
      type: str
      sample: application/vnd.oci.image.index.v1+json
    missing:
      description: Child manifests (orphan_index) or config and layer blobs (broken_manifest) that have no link or no data.
      type: list
      elements: str
      sample: [sha256:78b6c7afbee64353766bd83f2f12f7b50594d949d42929fb6f08118e83f9230b]
    tags:
      description: Tags whose current link reaches the object, directly or through an index.
      type: list
      elements: str
      sample: [latest]
    history_tags:
      description: Tags that reached the object only in their history (C(tags/<tag>/index)), not any more.
      type: list
      elements: str
      sample: []
    path:
      description: The file the finding rests on, relative to the C(docker/registry/v2) directory.
      type: str
      sample: repositories/infra-ci/_manifests/revisions/sha256/1879a69d6c6f02b068715023c37c262ee680235f7f8a53d41b4d6f8bddc95219/link
    message:
      description: One sentence naming the object and the problem.
      type: str
      sample: "infra-ci@sha256:1879...: index child manifests missing: sha256:78b6..."
    reason:
      description: The problem alone, without the object's name.
      type: str
      sample: child manifests are missing
    referenced:
      description: For orphan_layer_link, whether a manifest in the repository references the layer; null otherwise.
      type: bool
      sample: null
    harmful:
      description: False only for an unreferenced layer link without data.
      type: bool
      sample: true
broken_tags:
  description: Every C(repository:tag) that reaches a harmful finding, sorted.
  returned: always
  type: list
  elements: str
  sample: ["infra-ci:latest"]
log_lines:
  description: The stable one-line form of each finding, as the command line prints it.
  returned: always
  type: list
  elements: str
  sample:
    - "ORPHAN INDEX repo=infra-ci digest=sha256:1879... media_type=application/vnd.oci.image.index.v1+json missing=sha256:78b6... tags=latest history_tags=-"
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhosted.registry.plugins.module_utils._host_lock_options import HOST_LOCK_ARGUMENT_SPEC
from ansible_collections.selfhosted.registry.plugins.module_utils._report_files import write_report_files
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import (
    HostLockError,
    ScanError,
    failed_scan_metrics,
    failed_scan_report,
    host_lock,
    scan_metrics,
    scan_storage,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            storage_root=dict(type="path", required=True),
            repositories=dict(type="list", elements="str", default=[]),
            min_age=dict(type="int", default=0),
            report_path=dict(type="path"),
            metrics_path=dict(type="path"),
            fail_on_findings=dict(type="bool", default=False),
            **HOST_LOCK_ARGUMENT_SPEC,
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["min_age"] < 0:
        module.fail_json(msg=f"min_age must not be negative, got {params['min_age']}")
    started = time.time()
    try:
        with host_lock("storage scan", params["lock_path"] or "", float(params["lock_timeout"])):
            result = scan_storage(params["storage_root"], repositories=params["repositories"], min_age=params["min_age"])
    except (ScanError, HostLockError) as error:
        # The report and metrics still say the scan failed, so monitoring does not keep the last good state.
        problem = write_report_files(params["report_path"], failed_scan_report(params["storage_root"], str(error), started),
                                     params["metrics_path"], failed_scan_metrics(started))
        if problem:
            module.warn(problem)
        module.fail_json(msg=str(error))
    report = result.as_report()
    # Report files are the scan's output, not a change to the registry, so they are written in check mode too.
    problem = write_report_files(params["report_path"], report, params["metrics_path"], scan_metrics(result))
    if problem:
        module.fail_json(msg=problem)
    output = dict(
        changed=False,
        clean=result.clean,
        storage_root=result.storage_root,
        summary=report["summary"],
        counts=dict(
            repositories=result.repositories,
            revisions=result.revisions,
            tags=result.tags,
            manifests_read=result.manifests_read,
            skipped_recent=result.skipped_recent,
            dropped_on_recheck=result.dropped_on_recheck,
            duration_seconds=report["duration_seconds"],
        ),
        findings=report["findings"],
        broken_tags=report["broken_tags"],
        log_lines=[finding.log_line() for finding in result.findings],
    )
    if params["fail_on_findings"] and not result.clean:
        harmful = [finding for finding in result.findings if finding.harmful]
        module.fail_json(
            msg=f"registry storage is not clean: {len(harmful)} finding(s), first: {harmful[0].message}", **output
        )
    module.exit_json(**output)


if __name__ == "__main__":
    main()

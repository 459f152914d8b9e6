#!/usr/bin/python
# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: run the registry's garbage-collect only when it cannot break a tagged image."""

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_garbage_collect
short_description: Run a distribution registry's garbage-collect, refusing runs that would break tagged images
version_added: 0.1.0
description:
  - Runs C(garbage-collect --dry-run) with the flags asked for, reads what it would delete, follows every tag
    through the registry's filesystem storage and refuses (fails, deleting nothing) when anything it would
    delete is still reachable from a tag. This is the C(--delete-untagged) bug of distribution 2.8.x, which
    deletes the untagged children of tagged multi-arch indexes.
  - Otherwise runs C(before_command) (stop the registry or make it read-only), the real collection, then
    C(after_command) (start or restart the registry; a running registry's blob-descriptor cache keeps answering
    for deleted blobs), scans the storage and reports what was reclaimed.
  - C(after_command) runs whenever C(before_command) ran or the collection was attempted, even on failure, refusal,
    a timeout (O(gc_timeout)) or SIGTERM/SIGHUP; the collector is stopped first (O(gc_stop_command)).
  - Exit status 1 of C(garbage-collect) has several causes; the module tells them apart in RV(failure_kind).
  - The same guard runs on the registry host without Ansible as C(python3 -m registry_tools._registry_tools_cli gc).
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
      - Runs only the dry run and the verdict; no command that changes anything (neither the hooks nor the collection) runs.
  diff_mode:
    support: full
    details:
      - The diff lists the manifests and blobs that were deleted (or, in check mode, would be).
  idempotent:
    description:
      - Whether running the module twice on the same state gives the same result without changing anything.
    support: full
    details:
      - A second run finds nothing eligible and reports C(changed=false).
options:
  storage_root:
    description:
      - The registry's C(storage.filesystem.rootdirectory) as seen from the host the module runs on,
        or its C(docker/registry/v2) directory.
    type: path
    required: true
  config_path:
    description:
      - The registry configuration file as the O(gc_command) sees it (inside the container when the command
        runs in one).
      - It must name the same storage as O(storage_root). Before any command runs, the module reads its
        C(storage.filesystem.rootdirectory) (from O(config_on_host) when given) and refuses unless its real path is
        the real path of O(storage_root), or, with O(storage_root_in_config), unless it is that path. After the dry
        run, every repository and manifest revision the collector walked must be in O(storage_root), or nothing
        more runs (RV(failure_kind=storage_mismatch)).
      - The environment variable C(REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY), which the registry reads over its
        file, is honoured when the collector runs on this host.
    type: str
    required: true
  config_on_host:
    description:
      - The same configuration file as the host the module runs on sees it, when O(config_path) is a path inside
        the collector's container. Defaults to O(config_path).
    type: path
  storage_root_in_config:
    description:
      - When the collector runs in a container that mounts O(storage_root) at this path, the C(rootdirectory) the
        configuration must name. Leave it out when the collector runs on this host (real paths are compared).
    type: str
  delete_untagged:
    description:
      - Pass C(--delete-untagged) to C(garbage-collect). The module refuses the run when it would delete
        anything a tag still reaches.
    type: bool
    default: false
  gc_command:
    description:
      - Command (argument list, no shell) that runs the registry binary; C(garbage-collect [--dry-run]
        [--delete-untagged] <config_path>) is appended.
      - For the compose stack, for example C([docker, compose, -f, /opt/registry/compose.yml, run, --rm,
        --no-deps, registry, registry]) (works while the service is stopped) or
        C([docker, compose, -f, /opt/registry/compose.yml, exec, -T, registry, registry]).
    type: list
    elements: str
    default: [docker-registry]
  before_command:
    description:
      - Command (argument list, no shell) run before the collection, to stop the registry or switch it to
        read-only (C(storage.maintenance.readonly.enabled)). Not run in check mode.
    type: list
    elements: str
    default: []
  after_command:
    description:
      - Command (argument list, no shell) run after the collection whatever happened, to start or restart
        the registry. Not run in check mode.
    type: list
    elements: str
    default: []
  registry_offline:
    description:
      - Say that the registry is stopped or read-only for the whole run although no O(before_command) makes it so.
      - Without a O(before_command) or this, the real collection is refused (RV(failure_kind=registry_writable)),
        because a push landing between the dry run and the collection is not in the verdict and could be broken.
        Check mode runs either way.
    type: bool
    default: false
  timeout:
    description: Seconds each command may take.
    type: int
    default: 3600
  gc_timeout:
    description:
      - Seconds the collector (the dry run, then the collection) may run. When it is exceeded the collector's whole
        process group is killed, O(gc_stop_command) runs, then O(after_command), before the module fails.
      - Defaults to O(timeout).
    type: int
  gc_stop_command:
    description:
      - Command (argument list, no shell) run when the collector had to be stopped (timeout, SIGTERM, SIGHUP), after its
        process group is killed and before O(after_command) makes the registry writable again.
      - Needed when killing the O(gc_command) does not stop the collector, as with C(docker compose run). Give the
        one-off container a name (C(--name registry-gc)) and remove it here (C([docker, rm, --force, registry-gc])).
    type: list
    elements: str
    default: []
  report_path:
    description: Write the outcome as JSON to this file (atomically).
    type: path
  metrics_path:
    description:
      - Write Prometheus samples (C(registry_gc_refused), C(registry_gc_reclaimed_bytes), ...) to this file.
      - Written twice outside check mode. Before the registry is stopped, C(registry_gc_running) 1 with
        C(registry_gc_started_timestamp_seconds) and C(registry_gc_time_limit_seconds) (the longest the run may take
        by its timeouts), so the C(registry_probe) role's rules hold C(RegistryCatalogInaccessible) during planned
        maintenance and fire once it overruns. After the run, its outcome with C(registry_gc_running) 0 and
        C(registry_gc_last_run_timestamp_seconds).
    type: path
notes:
  - Fails with RV(status=refused) when the collection would break a tagged image; the result lists the
    RV(blockers) (kind, repository, digest and tags).
  - Reachability follows stored manifest content from every current tag, not only revision links. A tag whose
    revision link is gone (a dangling tag) therefore still blocks a plain collection that would sweep its
    manifest, config and layers, because those are what re-linking the revision needs.
  - Tag history (C(_manifests/tags/<tag>/index)) does not protect anything, as in the registry itself.
  - Fails closed. The registry's collector follows symbolic links that the guard never follows, so anything the
    guard cannot read could hide a blocker. When the guard cannot read a repository, C(_manifests) or tag path, or a
    manifest that a tag reaches, it refuses the collection with RV(failure_kind=unreadable_storage).
seealso:
  - module: selfhosted.registry.registry_orphan_scan
"""

EXAMPLES = r"""
- name: Collect garbage with the registry stopped
  selfhosted.registry.registry_garbage_collect:
    storage_root: /srv/registry/data
    # The collector runs in a one-off container that mounts /srv/registry/data at /var/lib/registry.
    config_path: /etc/docker/registry/config.yml
    config_on_host: /opt/registry/config.yml
    storage_root_in_config: /var/lib/registry
    gc_command: [docker, compose, -f, /opt/registry/compose.yml, run, --rm, --no-deps, --name, registry-gc, registry, registry]
    gc_stop_command: [docker, rm, --force, registry-gc]
    gc_timeout: 7200
    before_command: [docker, compose, -f, /opt/registry/compose.yml, stop, registry]
    after_command: [docker, compose, -f, /opt/registry/compose.yml, up, -d, registry]
  register: gc

- name: See what --delete-untagged would do, and whether it is safe
  selfhosted.registry.registry_garbage_collect:
    storage_root: /srv/registry/data
    config_path: /etc/docker/registry/config.yml
    gc_command: [docker-registry]
    delete_untagged: true
  check_mode: true
  diff: true
"""

RETURN = r"""
status:
  description: C(collected), C(nothing_to_collect), C(would_collect) (check mode), C(refused) or C(error).
  returned: always
  type: str
  sample: collected
message:
  description: One sentence explaining the status.
  returned: always
  type: str
  sample: deleted 0 manifest(s) and 1 blob(s), 42 bytes
failure_kind:
  description: >-
    Why it failed: C(configuration), C(missing_tags_directory), C(damaged_storage),
    C(storage_mismatch) (the configuration does not name O(storage_root)), C(unreadable_storage) (a repository,
    C(_manifests) or tag path that is a symbolic link or cannot be read, or a manifest reached from a tag that
    cannot be read; the collection is refused), C(hook), C(command), C(unknown);
    empty when it did not fail.
  returned: always
  type: str
  sample: ""
delete_untagged:
  description: Whether C(--delete-untagged) was asked for.
  returned: always
  type: bool
  sample: false
eligible_manifests:
  description: Manifests the dry run would delete (only with C(delete_untagged)).
  returned: always
  type: list
  elements: dict
  sample: [{repository: infra-ci, digest: "sha256:78b6c7afbee64353766bd83f2f12f7b50594d949d42929fb6f08118e83f9230b"}]
eligible_blobs:
  description: Blobs the dry run would delete.
  returned: always
  type: list
  elements: str
  sample: ["sha256:2a62f5e67a414142e16d961895f32bd502a42387c44724d035098afb1a823a57"]
blockers:
  description: What the collection would delete although a tag reaches it; non-empty exactly when refused.
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: C(manifest) or C(blob).
      type: str
      sample: manifest
    repository:
      description: Repository of the tag that reaches it.
      type: str
      sample: infra-ci
    digest:
      description: The object.
      type: str
      sample: sha256:78b6c7afbee64353766bd83f2f12f7b50594d949d42929fb6f08118e83f9230b
    tags:
      description: Tags that reach it.
      type: list
      elements: str
      sample: [latest]
    role:
      description: C(tagged manifest), C(child manifest) or C(config or layer).
      type: str
      sample: child manifest
    message:
      description: One sentence naming object and tags.
      type: str
      sample: "manifest sha256:78b6... (child manifest) would be deleted but is reachable from infra-ci:latest"
deleted_manifests:
  description: Manifests whose revision link existed before the collection and not after.
  returned: always
  type: list
  elements: dict
  sample: []
deleted_blobs:
  description: Blobs whose data existed before the collection and not after.
  returned: always
  type: list
  elements: str
  sample: ["sha256:2a62f5e67a414142e16d961895f32bd502a42387c44724d035098afb1a823a57"]
reclaimed_bytes:
  description: Sum of the sizes of the deleted blobs, measured before the collection.
  returned: always
  type: int
  sample: 42
commands:
  description: Every command run, in order (dry run, hooks, collection).
  returned: always
  type: list
  elements: list
  sample: [[docker-registry, garbage-collect, --dry-run, /etc/docker/registry/config.yml]]
warnings_list:
  description: Things to know that did not stop the run (no before command, after command failed, damage after the run).
  returned: always
  type: list
  elements: str
  sample: []
scan_after:
  description: >-
    Storage scan after a real collection, run once the after command has restarted the registry:
    C(clean), C(summary) per kind, C(broken_tags), C(new_damage) (messages of harmful findings that involve
    a digest this run deleted; a warning names the first) and C(other_damage) (the number of harmful
    findings that do not). Null when no real collection ran.
  returned: always
  type: dict
  sample: {clean: true, summary: {orphan_index: 0}, broken_tags: [], new_damage: [], other_damage: 0}
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhosted.registry.plugins.module_utils._host_lock_options import HOST_LOCK_ARGUMENT_SPEC
from ansible_collections.selfhosted.registry.plugins.module_utils._gc_guard import (
    GCGuardError,
    GCOptions,
    run_guarded_gc,
    running_metrics,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._report_files import write_report_files
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import HostLockError, host_lock


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            storage_root=dict(type="path", required=True),
            config_path=dict(type="str", required=True),
            config_on_host=dict(type="path"),
            storage_root_in_config=dict(type="str"),
            delete_untagged=dict(type="bool", default=False),
            gc_command=dict(type="list", elements="str", default=["docker-registry"]),
            before_command=dict(type="list", elements="str", default=[]),
            after_command=dict(type="list", elements="str", default=[]),
            registry_offline=dict(type="bool", default=False),
            timeout=dict(type="int", default=3600),
            gc_timeout=dict(type="int"),
            gc_stop_command=dict(type="list", elements="str", default=[]),
            report_path=dict(type="path"),
            metrics_path=dict(type="path"),
            **HOST_LOCK_ARGUMENT_SPEC,
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be positive, got {params['timeout']}")
    if params["gc_timeout"] is not None and params["gc_timeout"] <= 0:
        module.fail_json(msg=f"gc_timeout must be positive, got {params['gc_timeout']}")
    options = GCOptions(
        storage_root=params["storage_root"],
        config_path=params["config_path"],
        config_on_host=params["config_on_host"] or "",
        storage_root_in_config=params["storage_root_in_config"] or "",
        delete_untagged=params["delete_untagged"],
        gc_command=tuple(params["gc_command"]),
        before_command=tuple(params["before_command"]),
        after_command=tuple(params["after_command"]),
        check_mode=module.check_mode,
        timeout=float(params["timeout"]),
        gc_timeout=float(params["gc_timeout"] or 0),
        gc_stop_command=tuple(params["gc_stop_command"]),
        registry_offline=params["registry_offline"],
    )
    try:
        with host_lock("guarded garbage collection", params["lock_path"] or "", float(params["lock_timeout"])):
            if params["metrics_path"] and not module.check_mode:
                # Planned maintenance, said before the registry stops (see metrics_path).
                problem = write_report_files(None, {}, params["metrics_path"], running_metrics(options, time.time()))
                if problem:
                    module.fail_json(msg=problem)
            outcome = run_guarded_gc(options)
    except (GCGuardError, HostLockError) as error:
        module.fail_json(msg=str(error))
    result = outcome.as_dict()
    result.pop("check_mode")
    result["warnings_list"] = result.pop("warnings")
    problem = write_report_files(params["report_path"], outcome.as_dict(), params["metrics_path"], outcome.metrics())
    if problem:
        module.fail_json(msg=problem, **result)
    if module._diff:
        result["diff"] = outcome.diff()
    for warning in outcome.warnings:
        module.warn(warning)
    if outcome.status in ("refused", "error"):
        module.fail_json(msg=outcome.message, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

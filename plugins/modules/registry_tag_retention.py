#!/usr/bin/python
# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

# The connection options share registry_connection's argument spec but not its doc fragment: this module's
# client is the standard-library one of _tag_retention (no token auth, no retries, a per-read socket timeout,
# no requests on the host), so the fragment's text and its requirements line would be wrong here.
DOCUMENTATION = r"""
module: registry_tag_retention
short_description: Delete old tags of a distribution registry without breaking any kept image
version_added: 0.1.0
description:
  - The safe replacement for deleting old tag directories with C(rm -rf). Keeps the newest O(keep_newest) tags
    of each repository, every tag matching O(protected_tags) and every tag younger than O(min_age_days), and
    deletes the other tags by manifest digest through the registry API.
  - Decides from the registry's filesystem storage (which tags exist, what they resolve to, when each was last
    pushed, which manifests each index references), so it runs on the registry host.
  - Deleting a digest removes every tag that points to it, and registry 2.8 does not check whether an index
    still references what it deletes. So a digest is deleted only when no kept tag resolves to it, no kept tag
    reaches it through an index, no index that stays in the repository references it, and every tag pointing
    to it is old. A tag spared for that reason is returned in RV(kept) with the tag or index that needs it.
  - The untagged children of a deleted index are deleted with it, unless another index that stays references
    them. An index is always deleted before its children, so a run that stops half-way never leaves an index
    whose children are gone.
  - A repository in which any tag, revision or manifest cannot be read is left untouched and reported in
    RV(errors), because what cannot be read might be what needs a candidate.
  - Before each delete the repository's tag links are checked again (names and modification times); if a push
    changed them since the plan was made, the rest of that repository is skipped and reported in RV(errors).
    After each delete they are read again, and a tag the registry removed along with the digest (one pushed to that
    digest while it was being deleted) is returned in RV(lost_tags) and RV(errors), and the rest of the repository
    is skipped.
  - Signatures, attestations and SBOMs that cosign stores as tags named after a digest
    (C(sha256-<hex>.sig), C(.att), C(.sbom)) belong to that digest. They are kept while it stays, deleted with it,
    and never count towards O(keep_newest). One whose digest is no longer in the repository is deleted once it is
    older than O(min_age_days).
  - Deleting manifests frees no space by itself. Run the garbage-collection guard afterwards (plain
    C(garbage-collect), never C(--delete-untagged)) and restart the registry.
  - Dry run by default. Nothing is deleted unless O(dry_run=false).
  - The same code runs from cron on the registry host as C(python3 -m registry_tools._tag_retention).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - selfhosted.registry.host_lock
options:
  storage_root:
    description:
      - The registry's storage root (its C(storage.filesystem.rootdirectory)), or the C(docker/registry/v2)
        directory inside it.
    type: path
    required: true
  registry_url:
    description:
      - Base URL of the same registry, as reached from the registry host, for example V(http://127.0.0.1:5000).
      - The URL must not contain credentials.
      - Also used in dry runs and check mode, with one C(GET /v2/), so that a dry run proves the credentials work.
    type: str
    required: true
  username:
    description:
      - User for basic authentication. Leave unset for anonymous access.
      - Falls back to the environment variable E(REGISTRY_USERNAME).
      - Registries that use token authentication are not supported.
    type: str
  password:
    description:
      - Password for O(username).
      - Falls back to the environment variable E(REGISTRY_PASSWORD).
      - Never shown in output, results, errors or reports.
    type: str
  validate_certs:
    description:
      - Verify the registry's TLS certificate. Turn this off only for a throwaway test registry.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file with the CA certificates that sign the registry's certificate.
    type: path
  timeout:
    description:
      - Seconds to wait for each HTTP request. Requests are not retried; a failed delete is reported and the
        run goes on with the next digest.
    type: int
    default: 30
  keep_newest:
    description:
      - How many tags to keep in each repository, newest first by push time (the modification time of the
        tag's C(current/link), which the registry rewrites on every push). Protected tags do not count.
    type: int
    default: 10
  min_age_days:
    description:
      - Never delete a tag pushed less than this many days ago, even beyond O(keep_newest).
    type: float
    default: 7
  protected_tags:
    description:
      - Shell-style patterns (C(fnmatch), case-sensitive) of tags that are never deleted and do not count toward
        O(keep_newest).
      - The default protects V(latest) and release tags such as V(1.2.3) and V(v1.2.3) (and V(v1.2.3-rc1)).
        Pass an empty list to protect no tag by name.
    type: list
    elements: str
    default: ['latest', '[0-9]*.[0-9]*.[0-9]*', 'v[0-9]*.[0-9]*.[0-9]*']
  repositories:
    description:
      - Only repositories matching one of these shell-style patterns are handled. V(*) also matches V(/), so
        V(team/*) covers V(team/app/api).
    type: list
    elements: str
    default: ['*']
  exclude_repositories:
    description:
      - Repositories matching one of these patterns are never touched, even when O(repositories) matches them.
    type: list
    elements: str
    default: []
  dry_run:
    description:
      - Only plan and report. Set to V(false) to delete.
    type: bool
    default: true
  report_path:
    description:
      - Also write the result as JSON to this file on the registry host, atomically.
      - Written in check mode and dry runs too; it is the module's output, not a change to the registry.
    type: path
attributes:
  check_mode:
    support: full
    details:
      - In check mode the module plans exactly as a real run would and deletes nothing; the registry only sees
        C(GET /v2/). RV(changed) then says whether a run with O(dry_run=false) would delete something.
  diff_mode:
    support: full
    details:
      - For each repository with planned or done deletions, the tags (and untagged digests, written C(@sha256:...))
        before and after.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
    details:
      - Once the old tags are deleted, a second run with the same options finds nothing more to delete, unless
        time has passed or tags were pushed.
  platform:
    support: full
    platforms: posix
notes:
  - The module must run on the registry host, because it reads the storage tree. Target that host in the play's
    C(hosts) or use O(ignore:delegate_to) with its inventory name. It needs only Python 3.8 or later there.
  - The registry must have C(storage.delete.enabled=true); otherwise the first delete is refused (405) and the
    run stops with that error.
  - Pull-through mirrors accept no deletes; run it against the private registry only.
author:
  - selfhosted.registry maintainers (@selfhosted-registry)
"""

EXAMPLES = r"""
- name: See what retention would delete (dry run is the default)
  selfhosted.registry.registry_tag_retention:
    storage_root: /srv/registry/private/data
    registry_url: http://127.0.0.1:5000
    username: retention
    password: "{{ registry_retention_password }}"
  register: retention_plan

- name: Keep the 20 newest build tags of the CI repositories, then reclaim space with a plain GC
  selfhosted.registry.registry_tag_retention:
    storage_root: /srv/registry/private/data
    registry_url: http://127.0.0.1:5000
    username: retention
    password: "{{ registry_retention_password }}"
    keep_newest: 20
    min_age_days: 14
    repositories:
      - ci/*
      - infra-ci
    exclude_repositories:
      - ci/golden-*
    protected_tags:
      - latest
      - stable
      - v[0-9]*
    dry_run: false
    report_path: /var/lib/registry-tools/tag-retention.json
  delegate_to: registry-vm-1
  register: retention

- name: Reclaim the space the deleted manifests held
  selfhosted.registry.registry_garbage_collect:
    delete_untagged: false
  delegate_to: registry-vm-1
  when: retention.deleted | length > 0
"""

RETURN = r"""
changed:
  description:
    - True when at least one manifest was deleted. In check mode, true when a run with O(dry_run=false) would
      delete something. Always false in a dry run outside check mode.
  returned: always
  type: bool
  sample: true
msg:
  description: One line saying what was (or would be) deleted, or the first error.
  returned: always
  type: str
  sample: Deleted 10 manifests (10 tags) in 1 repositories; kept 7 tags. Run a plain garbage collection to reclaim the space.
dry_run:
  description: True when nothing was deleted on purpose (O(dry_run=true) or check mode).
  returned: success
  type: bool
  sample: false
deleted:
  description: Manifests deleted in this run, in the order they were deleted (an index before its children).
  returned: success
  type: list
  elements: dict
  contains:
    repository:
      description: Repository name.
      type: str
      sample: infra-ci
    digest:
      description: Manifest digest that was deleted.
      type: str
      sample: sha256:1bc4f93b589948ce9af6c25135fbc48866dd050a795f2e59e6423c1440c7dbf4
    tags:
      description: The tags that pointed to it, all removed with it; empty for an untagged child of a deleted index.
      type: list
      elements: str
      sample: [build-41]
    reason:
      description: >-
        V(old_tags), V(child_of:<index digest>) for an untagged child deleted with its index, or
        V(signature_of:<digest>) for a cosign signature, attestation or SBOM deleted with the digest it names.
      type: str
      sample: old_tags
planned:
  description: Every deletion the plan holds, with the same keys as RV(deleted); in a dry run, what would be deleted.
  returned: success
  type: list
  elements: dict
  sample:
    - repository: infra-ci
      digest: sha256:1bc4f93b589948ce9af6c25135fbc48866dd050a795f2e59e6423c1440c7dbf4
      tags: [build-41]
      reason: old_tags
kept:
  description: Every tag that stays in the handled repositories, and why.
  returned: success
  type: list
  elements: dict
  contains:
    repository:
      description: Repository name.
      type: str
      sample: infra-ci
    tag:
      description: The tag.
      type: str
      sample: build-7-amd64
    digest:
      description: What the tag resolves to.
      type: str
      sample: sha256:6aa402bc73625bf9113c8671d290bc893aa6088ec387abb4ff32a94bba840af6
    reason:
      description:
        - V(newest), V(protected) or V(too_young) when the policy keeps it.
        - V(same_digest_as:<tag>) when a kept tag resolves to the same manifest.
        - V(referenced_by_tag:<tag>) when a kept tag's index reaches it.
        - V(referenced_by_index:<digest>) when an index that stays (tagged or not) references it.
        - V(no_revision) when its manifest has no revision link, so the API cannot delete it.
        - V(signature_of:<digest>) for a cosign signature, attestation or SBOM tag whose digest stays.
        - V(repository_not_readable) when the policy would delete it but something in its repository cannot be
          read (see RV(errors)).
      type: str
      sample: referenced_by_tag:latest
lost_tags:
  description:
    - Tags the registry removed along with a deleted digest because they were pushed to it while it was being
      deleted (found by reading the tag links again after each delete). Push them again.
  returned: always
  type: list
  elements: dict
  sample:
    - repository: app
      tag: stable
      digest: "sha256:2a62f5e67a414142e16d961895f32bd502a42387c44724d035098afb1a823a57"
      reason: removed_with_deleted_digest
errors:
  description: One sentence per problem; a repository named here was left untouched from that point on.
  returned: always
  type: list
  elements: str
  sample: ["app: docker/registry/v2/repositories/app/_manifests/tags/b2/current/link holds ... ; nothing is deleted in this repository."]
summary:
  description: Counts for the run.
  returned: success
  type: dict
  contains:
    dry_run:
      description: Same as RV(dry_run).
      type: bool
      sample: false
    repositories:
      description: Repositories handled (selected by the patterns).
      type: int
      sample: 3
    planned_digests:
      description: Manifests the plan deletes.
      type: int
      sample: 10
    planned_tags:
      description: Tags the plan deletes.
      type: int
      sample: 10
    deleted_digests:
      description: Manifests deleted.
      type: int
      sample: 10
    deleted_tags:
      description: Tags deleted.
      type: int
      sample: 10
    kept_tags:
      description: Tags kept.
      type: int
      sample: 7
    lost_tags:
      description: Number of RV(lost_tags).
      type: int
      sample: 0
    errors:
      description: Number of RV(errors).
      type: int
      sample: 0
next_step:
  description: What to run next when something was deleted (the plain garbage collection), else empty.
  returned: success
  type: str
  sample: "Deleting manifests frees no space by itself: run the GC guard now (plain garbage-collect, never --delete-untagged) ..."
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

# The shared connection spec imports requests only when a client is built, so this host-side module can use it.
from ..module_utils._host_lock_options import HOST_LOCK_ARGUMENT_SPEC
from ..module_utils._registry_options import registry_connection_argument_spec
from ..module_utils._report_files import write_json_report
from ..module_utils._storage_scan import HostLockError, host_lock
from ..module_utils._tag_retention import (
    DEFAULT_KEEP_NEWEST,
    DEFAULT_MIN_AGE_DAYS,
    DEFAULT_PROTECTED_TAGS,
    RegistryDeleteClient,
    RetentionPolicy,
    RetentionResult,
    TagRetentionError,
    run_retention,
)


def _argument_spec() -> t.Dict[str, t.Any]:
    return dict(
        registry_connection_argument_spec(),
        storage_root=dict(type="path", required=True),
        keep_newest=dict(type="int", default=DEFAULT_KEEP_NEWEST),
        min_age_days=dict(type="float", default=DEFAULT_MIN_AGE_DAYS),
        protected_tags=dict(type="list", elements="str", default=list(DEFAULT_PROTECTED_TAGS)),
        repositories=dict(type="list", elements="str", default=["*"]),
        exclude_repositories=dict(type="list", elements="str", default=[]),
        dry_run=dict(type="bool", default=True),
        report_path=dict(type="path"),
        **HOST_LOCK_ARGUMENT_SPEC,
    )


def _diff(result: RetentionResult) -> t.List[t.Dict[str, str]]:
    """Per repository with deletions: its tags (and untagged digests to delete) before, what stays after."""
    removed = result.planned if result.dry_run else result.deleted
    touched = sorted({item.repository for item in removed})
    diffs = []
    for repository in touched:
        before = {item.tag for item in result.kept if item.repository == repository}
        for item in result.planned:
            if item.repository == repository:
                before.update(item.tags or [f"@{item.digest}"])
        gone = set()
        for item in removed:
            if item.repository == repository:
                gone.update(item.tags or [f"@{item.digest}"])
        diffs.append(
            {
                "before_header": f"{repository} (tags)",
                "after_header": f"{repository} (tags)",
                "before": "".join(f"{line}\n" for line in sorted(before)),
                "after": "".join(f"{line}\n" for line in sorted(before - gone)),
            }
        )
    return diffs


def _message(result: RetentionResult) -> str:
    summary = result.summary()
    if result.dry_run:
        text = (
            f"Would delete {summary['planned_digests']} manifests ({summary['planned_tags']} tags) "
            f"in {summary['repositories']} repositories; would keep {summary['kept_tags']} tags."
        )
    else:
        text = (
            f"Deleted {summary['deleted_digests']} manifests ({summary['deleted_tags']} tags) "
            f"in {summary['repositories']} repositories; kept {summary['kept_tags']} tags."
        )
        if result.deleted:
            text += " Run a plain garbage collection to reclaim the space."
    return text


def main() -> None:
    module = AnsibleModule(argument_spec=_argument_spec(), supports_check_mode=True)
    params = module.params
    dry_run = bool(params["dry_run"] or module.check_mode)
    policy = RetentionPolicy(
        keep_newest=params["keep_newest"],
        min_age_days=params["min_age_days"],
        protected_tags=tuple(params["protected_tags"]),
        include_repositories=tuple(params["repositories"]),
        exclude_repositories=tuple(params["exclude_repositories"]),
    )
    try:
        client = RegistryDeleteClient(
            params["registry_url"],
            params["username"],
            params["password"],
            params["ca_path"] if params["validate_certs"] else None,
            params["validate_certs"],
            float(params["timeout"]),
        )
        with host_lock("tag retention", params["lock_path"] or "", float(params["lock_timeout"])):
            result = run_retention(params["storage_root"], policy, client, apply=not dry_run)
    except (TagRetentionError, HostLockError) as error:
        module.fail_json(msg=str(error), errors=[str(error)])

    shaped = result.as_dict()
    if params["report_path"]:
        try:
            write_json_report(params["report_path"], shaped)
        except OSError as error:
            module.fail_json(msg=f"report {params['report_path']} cannot be written: {error.strerror}.", **shaped)

    changed = bool(result.deleted) or (module.check_mode and not params["dry_run"] and bool(result.planned))
    output: t.Dict[str, t.Any] = dict(shaped, changed=changed, msg=_message(result))
    if module._diff:
        output["diff"] = _diff(result)
    if result.errors:
        output["msg"] = f"{len(result.errors)} problems, the first: {result.errors[0]} " + output["msg"]
        module.fail_json(**output)
    module.exit_json(**output)


if __name__ == "__main__":
    main()

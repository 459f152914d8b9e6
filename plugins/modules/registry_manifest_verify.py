#!/usr/bin/python
# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_manifest_verify
short_description: Verify that images in a distribution registry can be pulled, end to end
version_added: 0.1.0
description:
  - Walks each image over the registry API the way a pull does (tag, index, every child manifest
    with attestations, config, every layer) and reports every object that is missing or damaged,
    with its chain from the tag.
  - Each unique object (repository and digest) is requested once per run, however many images share it.
  - Every manifest body is hashed and compared with the digest asked for and the C(Docker-Content-Digest)
    header.
  - Verifies one image, a list of images, or every tag of every repository (O(catalog=true)).
  - Gives each image exactly one verdict, RV(images[].verdict), listed by verdict in RV(verdicts). V(ok). V(not_found)
    means the reference itself does not exist (an image asked for by name whose tag or digest answers 404; in
    catalog mode a tag that the registry's own tag list names but cannot resolve is broken). Only V(broken) images
    need a rebuild; RV(images[].orphan_index) says when it is the garbage collector's pattern.
  - Keeps the two other verdicts apart. V(broken) means the registry answered and the object is missing or damaged
    (404, a body that does not hash to its digest, content that is not a manifest). V(unverified) means the
    registry did not answer for it (429 or 5xx after retries, a timeout, a refused connection, rejected
    credentials, a redirect that cannot be followed, a body cut short every time it was read), which is a probe
    error, never reported as damage. The one exception is a blob cut short every time in O(blob_check=read),
    which is the registry's blob cache answering for data that is gone, so it is broken.
  - In catalog mode a repository whose tag list cannot be read is reported under RV(repository_errors) and
    every other repository is still verified. A registry or catalog that cannot be read at all fails the
    task with RV(verified=false).
  - Fails when anything is broken or could not be verified unless O(fail_on_broken=false) or O(mirror=true).
extends_documentation_fragment:
  - selfhosted.registry.registry_connection
  - ansible.builtin.action_common_attributes
  - selfhosted.registry.attributes.read_only
options:
  images:
    description:
      - Images to verify, as V(repository:tag), V(repository@sha256:...) or V(repository:tag@sha256:...).
      - A V(repository) without tag or digest means V(repository:latest). When both are given, the digest is
        what is verified (as C(docker pull) does).
      - A registry host prefix (V(registry.example.com:5000/team/app:1.0)) is allowed when it names the
        host and port of O(registry_url).
      - Mutually exclusive with O(catalog).
    type: list
    elements: str
  catalog:
    description:
      - Verify every tag of every repository the registry's catalog lists.
      - The catalog scope (C(registry:catalog:*)) must be granted to O(username) on token-auth registries.
    type: bool
    default: false
  repositories:
    description:
      - In catalog mode, only repositories matching one of these shell-style patterns (V(team/*), V(infra-?i)).
    type: list
    elements: str
  mirror:
    description:
      - The registry is a pull-through mirror. Findings are reported but never fail the task.
      - In catalog mode only the tagged manifests are checked (with C(HEAD)), because a mirror fetches children
        lazily from its upstream and asking for them would trigger upstream pulls.
    type: bool
    default: false
  platforms:
    description:
      - Only walk index children for these platforms (V(linux/amd64), V(linux/arm64/v8)); V(linux/arm64) also
        selects its variants. Attestations of the selected children are walked too.
      - Single-platform images are always walked.
      - Default is every platform.
    type: list
    elements: str
  blob_check:
    description:
      - How configs and layers are checked.
      - V(head) asks for headers only. It is fast, but after garbage collection on a running registry the
        blob-descriptor cache answers 200 for deleted blobs.
      - V(read) fetches the first byte of each blob (C(Range) request), which that cache cannot fake.
    type: str
    choices: [head, read]
    default: head
  concurrency:
    description:
      - Requests in flight at once (also the size of the HTTP connection pool).
    type: int
    default: 8
  retry_window:
    description:
      - Seconds to keep retrying a request that failed with a connection error, HTTP 408, 429 or 5xx, counted
        from the first failure, with backoff up to 5 seconds between tries. The default rides out a restart of the
        registry (for example by its garbage collection).
      - C(Retry-After) is honoured up to 10 seconds; one that points past the window ends the retries.
      - Once the registry has failed for a whole window, every further object is tried once, so a registry that
        stays down ends the run in about one window, and those objects are reported as not verified.
      - A body cut short after the headers is asked for twice more. A blob that is cut short every time in
        O(blob_check=read) is broken (the registry's blob cache after garbage collection).
      - V(0) turns retries off.
    type: int
    default: 30
  fail_on_broken:
    description:
      - Fail the task when any image is broken or could not be verified. With V(false) the result is only
        reported. A registry that cannot be read at all always fails the task.
    type: bool
    default: true
  manifest_cache_path:
    description:
      - Directory where the module keeps the body of every manifest it reads, one file per digest.
      - When a child manifest is later gone from the registry (the incident), its remembered body tells which
        configs and layers it needed, so those are checked and named too, each with its chain from the tag.
        Without it only the missing child manifest itself can be named.
      - A remembered body is used only when it hashes to its digest. Manifests are small (a few KiB each);
        nothing is ever removed from the directory.
      - Written in check mode too.
    type: path
  report_path:
    description:
      - Write the result as JSON to this file, atomically (a reader never sees a partial file).
      - Written in check mode too, because it is the module's output, not a change to the registry.
    type: path
  metrics_path:
    description:
      - Write Prometheus textfile metrics to this file, atomically. Name it C(*.prom) for node_exporter's
        textfile collector.
      - Written when the registry cannot be reached too, with C(registry_verify_up) set to 0.
      - The metrics are gauges describing the last run; their table is in the C(registry_probe) role's README.
        With O(report_path) also set, the time of the last run that read the registry and the count of
        consecutive runs that could not are carried from one report to the next.
      - Written in check mode too.
    type: path
  pushgateway_url:
    description:
      - Also push the same metrics as O(metrics_path) writes to this Prometheus Pushgateway
        (C(http://host:9091)), for runs where no node_exporter reads the files (an AWX job runs in a
        throwaway container).
      - Each run replaces the group O(pushgateway_job) + C(registry) with HTTP PUT, so a series the last run
        pushed and this one did not (an image no longer broken) is gone.
      - A Pushgateway that cannot be reached or refuses the push is one warning; the result, the failure on
        broken images and the files are those of the verification alone.
      - Pushed in check mode too. Scrape the Pushgateway with C(honor_labels) set to V(true) so the C(registry) label
        is kept.
      - Without a report of this registry at O(report_path) (none given, or a first run), the state carried from one
        run to the next (the consecutive failed runs, the last successful run, the images last found broken) is read
        back from this group before the run, so the alerts work for a probe that keeps no files. A group that cannot
        be read is one warning; the run then starts from
        no earlier state.
    type: str
  pushgateway_job:
    description: The C(job) label of the pushed group.
    type: str
    default: selfhosted_registry_probe
  interval_seconds:
    description:
      - How often this verification is scheduled (a probe run by AWX, cron or a CronJob), exported as
        C(registry_verify_interval_seconds) with the metrics so the staleness alert knows when a run is overdue.
      - Leave unset for a run that is not scheduled.
    type: int
notes:
  - The module only reads from the registry. Run it where the registry is reachable, usually with
    O(ignore:delegate_to=localhost).
  - A child manifest that is gone cannot be read, so the configs and layers only it referenced cannot be
    listed over the API. With O(manifest_cache_path) set on the runs before the damage (a nightly probe),
    the module names them too; without it, it names the missing child manifest.
author:
  - selfhosted.registry maintainers (@selfhosted-registry)
"""

EXAMPLES = r"""
- name: Verify the CI image the pipelines pull
  selfhosted.registry.registry_manifest_verify:
    registry_url: https://registry.example.com:5000
    images:
      - infra-ci:latest
  delegate_to: localhost

- name: Verify every tag of the team repositories, reading a byte of every blob, and keep a report
  selfhosted.registry.registry_manifest_verify:
    registry_url: https://registry.example.com:5000
    username: "{{ registry_reader }}"
    password: "{{ registry_reader_password }}"
    catalog: true
    repositories:
      - team/*
    blob_check: read
    report_path: /var/lib/registry-probe/verify.json
    manifest_cache_path: /var/lib/registry-probe/manifests
    metrics_path: /var/lib/node_exporter/textfile/registry_verify.prom
  delegate_to: localhost

- name: Probe the whole catalog from an AWX job and push the metrics to a Pushgateway
  selfhosted.registry.registry_manifest_verify:
    registry_url: https://registry.example.com:5000
    catalog: true
    pushgateway_url: http://pushgateway.example.com:9091
  delegate_to: localhost

- name: Report on the Docker Hub mirror without ever failing
  selfhosted.registry.registry_manifest_verify:
    registry_url: https://mirror.example.com:5001
    catalog: true
    mirror: true
  delegate_to: localhost
  register: mirror_state
"""

RETURN = r"""
ok:
  description: True when every object of every image verified and nothing is broken.
  returned: always
  type: bool
  sample: false
verified:
  description: False when the registry or its catalog could not be read at all (nothing was verified).
  returned: always
  type: bool
  sample: true
changed:
  description: Always false; the module only reads.
  returned: always
  type: bool
  sample: false
msg:
  description: >-
    One line; when something is broken it names every broken object, then the images that could not be
    verified with the first reason for each.
  returned: always
  type: str
  sample: >-
    1 of 3 images are broken: infra-ci:latest: child manifest
    sha256:6aa402bc73625bf9113c8671d290bc893aa6088ec387abb4ff32a94bba840af6 answered 404 MANIFEST_UNKNOWN.
summary:
  description: Counts for the run.
  returned: success or when images are broken
  type: dict
  contains:
    images:
      description: Images verified.
      type: int
      sample: 3
    broken_images:
      description: Images with at least one broken object.
      type: int
      sample: 1
    unverified_images:
      description: Images not broken but with an object the registry did not answer for.
      type: int
      sample: 0
    not_found_images:
      description: Images asked for by name that do not exist.
      type: int
      sample: 0
    repository_errors:
      description: Catalog mode, repositories whose tag list could not be read.
      type: int
      sample: 0
    manifests:
      description: Unique manifests requested (a tag and its digest count once).
      type: int
      sample: 7
    blobs:
      description: Unique configs and layers checked.
      type: int
      sample: 10
    requests:
      description: HTTP requests sent, retries and token requests included.
      type: int
      sample: 18
    broken_objects:
      description: Unique broken objects (one shared by several images counts once).
      type: int
      sample: 4
    unverified_objects:
      description: Unique objects the registry did not answer for.
      type: int
      sample: 0
    foreign_layers:
      description: Foreign (non-distributable) layers skipped because the registry never holds them.
      type: int
      sample: 0
verdicts:
  description: The image references under each verdict, for a playbook or a workflow to branch on.
  returned: always, except when the options are wrong
  type: dict
  contains:
    ok:
      description: Images that verified end to end.
      type: list
      elements: str
      sample: [app:1.0]
    broken:
      description: Images with a missing or damaged object. The only ones to rebuild.
      type: list
      elements: str
      sample: [infra-ci:latest]
    unverified:
      description: Images the registry did not answer for. Fix the registry, the network or the credentials.
      type: list
      elements: str
      sample: []
    not_found:
      description: Images whose tag or digest does not exist. Check the names.
      type: list
      elements: str
      sample: []
images:
  description: >-
    One entry per image, in the order given (catalog mode is sorted by repository and tag). When the registry
    cannot be read at all, each image asked for by name is listed with verdict V(unverified) and the reason (none
    in catalog mode, whose images are not known then).
  returned: always, except when the options are wrong
  type: list
  elements: dict
  contains:
    reference:
      description: The image as verified.
      type: str
      sample: infra-ci:latest
    repository:
      description: Repository name.
      type: str
      sample: infra-ci
    tag:
      description: Tag, or null for a reference by digest only.
      type: str
      sample: latest
    digest:
      description: Digest of the tagged manifest, or null when it could not be read.
      type: str
      sample: sha256:a3a5edf369a9d543027ad2e4c3bd8975e5e56d9b2c766c046611535a063d4a16
    media_type:
      description: Media type of the tagged manifest, or null when it could not be read.
      type: str
      sample: application/vnd.oci.image.index.v1+json
    ok:
      description: True when every object of this image verified.
      type: bool
      sample: false
    verdict:
      description:
        - >-
          V(ok); V(broken) (the registry answered and an object is missing or damaged; wins over unverified);
          V(unverified) (the registry did not answer for an object, because it throttled, failed with 5xx after
          retries, timed out, refused or rejected the credentials; also every image when the registry could not be
          read at all); V(not_found) (the tag or digest asked for does not exist).
        - Only V(broken) images need a rebuild.
      type: str
      choices: [ok, broken, unverified, not_found]
      sample: broken
    orphan_index:
      description: >-
        True when the image is broken the garbage collector's way: the tag resolves to an index whose child
        manifest answers 404.
      type: bool
      sample: true
    reason:
      description: The first finding behind the verdict, one sentence naming the object; null when ok.
      type: str
      sample: >-
        infra-ci:latest: child manifest sha256:6aa402bc73625bf9113c8671d290bc893aa6088ec387abb4ff32a94bba840af6
        answered 404 MANIFEST_UNKNOWN.
    children:
      description: The index children walked (empty for a single-platform image).
      type: list
      elements: dict
      contains:
        digest:
          description: Child manifest digest.
          type: str
          sample: sha256:6aa402bc73625bf9113c8671d290bc893aa6088ec387abb4ff32a94bba840af6
        media_type:
          description: Child manifest media type, as the index lists it.
          type: str
          sample: application/vnd.oci.image.manifest.v1+json
        platform:
          description: C(os/architecture[/variant]); attestations are C(unknown/unknown).
          type: str
          sample: linux/amd64
        kind:
          description: C(image), C(attestation) or C(index) (a nested index).
          type: str
          sample: image
broken:
  description: Every broken object, once per image that needs it, with its chain from the tag.
  returned: success or when images are broken
  type: list
  elements: dict
  contains:
    reference:
      description: The image the object belongs to.
      type: str
      sample: infra-ci:latest
    chain:
      description: The image reference, then each digest from the tagged manifest down to the broken object.
      type: list
      elements: str
      sample:
        - infra-ci:latest
        - sha256:a3a5edf369a9d543027ad2e4c3bd8975e5e56d9b2c766c046611535a063d4a16
        - sha256:6aa402bc73625bf9113c8671d290bc893aa6088ec387abb4ff32a94bba840af6
    object_type:
      description: C(manifest), C(config) or C(layer).
      type: str
      sample: manifest
    digest:
      description: Digest of the broken object (null only for a tag that does not resolve).
      type: str
      sample: sha256:6aa402bc73625bf9113c8671d290bc893aa6088ec387abb4ff32a94bba840af6
    status:
      description: HTTP status of the answer, or null when no answer came.
      type: int
      sample: 404
    error_code:
      description: The registry's error code, or null when it sent none.
      type: str
      sample: MANIFEST_UNKNOWN
    message:
      description: One sentence naming the image, the object and the cause.
      type: str
      sample: >-
        infra-ci:latest: child manifest sha256:6aa402bc73625bf9113c8671d290bc893aa6088ec387abb4ff32a94bba840af6
        answered 404 MANIFEST_UNKNOWN.
unverified:
  description: >-
    Every object the registry did not answer for (throttled, timed out, refused, credentials rejected),
    once per image that needs it; the same keys as RV(broken). These are not damage.
  returned: success or when images are broken or unverified
  type: list
  elements: dict
  sample:
    - reference: infra-ci:latest
      chain: [infra-ci:latest]
      object_type: manifest
      digest: null
      status: 503
      error_code: null
      message: "infra-ci:latest: manifest answered HTTP 503."
not_found:
  description: The references asked for by name that do not exist; the same keys as RV(broken).
  returned: success or when images are broken, unverified or not found
  type: list
  elements: dict
  sample:
    - reference: infra-ci:lates
      chain: [infra-ci:lates]
      object_type: manifest
      digest: null
      status: 404
      error_code: MANIFEST_UNKNOWN
      message: "infra-ci:lates: manifest of tag lates answered 404 MANIFEST_UNKNOWN."
repository_errors:
  description: Catalog mode, one entry per repository whose tag list could not be read; the rest were verified.
  returned: success or when images are broken or unverified
  type: list
  elements: dict
  contains:
    repository:
      description: Repository name as the catalog lists it.
      type: str
      sample: team/api
    status:
      description: HTTP status of the answer, or null when no answer came.
      type: int
      sample: 404
    error_code:
      description: The registry's error code, or null.
      type: str
      sample: NAME_UNKNOWN
    message:
      description: One sentence naming the repository and the cause.
      type: str
      sample: The tag list of team/api of registry.example:5000 answered 404 NAME_UNKNOWN.
"""

import os
import typing as t

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ..module_utils._image_reference import ImageReferenceError, parse_image_reference
from ..module_utils._manifest_walk import ManifestCache, ManifestWalker
from ..module_utils._registry_client import REQUESTS_IMPORT_ERROR, RegistryError
from ..module_utils._registry_options import build_registry_client, registry_connection_argument_spec
from ..module_utils._report_files import Metric, pushgateway_url_problem, redact_url, write_json_report, write_metrics
from ..module_utils._verify_report import load_previous_run, push_run_metrics, run_verification


def _argument_spec() -> t.Dict[str, t.Any]:
    spec = registry_connection_argument_spec()
    spec.update(
        images=dict(type="list", elements="str"),
        catalog=dict(type="bool", default=False),
        repositories=dict(type="list", elements="str"),
        mirror=dict(type="bool", default=False),
        platforms=dict(type="list", elements="str"),
        blob_check=dict(type="str", choices=["head", "read"], default="head"),
        concurrency=dict(type="int", default=8),
        retry_window=dict(type="int", default=30),
        fail_on_broken=dict(type="bool", default=True),
        report_path=dict(type="path"),
        metrics_path=dict(type="path"),
        manifest_cache_path=dict(type="path"),
        pushgateway_url=dict(type="str"),
        pushgateway_job=dict(type="str", default="selfhosted_registry_probe"),
        interval_seconds=dict(type="int"),
    )
    return spec


def _write_outputs(module: AnsibleModule, report: t.Dict[str, t.Any], metrics: t.List[Metric]) -> None:
    """Write the optional report and metrics files; a path that cannot be written is one sentence."""
    for option, write, payload in (
        ("report_path", write_json_report, report),
        ("metrics_path", write_metrics, metrics),
    ):
        path = module.params[option]
        if not path:
            continue
        try:
            write(path, payload)
        except OSError as exc:
            module.fail_json(msg=f"Could not write {option} {path}: {exc.strerror or exc}.")


def main() -> None:
    module = AnsibleModule(
        argument_spec=_argument_spec(),
        supports_check_mode=True,
    )
    params = module.params
    if REQUESTS_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("requests"), exception=str(REQUESTS_IMPORT_ERROR))
    if params["catalog"] and params["images"]:
        module.fail_json(msg="Give either images or catalog=true, not both.")
    if not params["catalog"] and not params["images"]:
        module.fail_json(msg="Give the images to verify, or catalog=true to verify every tag of every repository.")
    if params["repositories"] and not params["catalog"]:
        module.fail_json(msg="The repositories patterns only apply with catalog=true.")
    if params["concurrency"] < 1:
        module.fail_json(msg=f"concurrency must be at least 1, not {params['concurrency']}.")
    if params["pushgateway_url"]:
        problem = pushgateway_url_problem(params["pushgateway_url"])
        if problem:
            module.fail_json(msg=f"pushgateway_url {redact_url(params['pushgateway_url'])} {problem}.")
        if not params["pushgateway_job"].strip():
            module.fail_json(msg="pushgateway_job must not be empty.")
    if params["interval_seconds"] is not None and params["interval_seconds"] < 1:
        module.fail_json(msg=f"interval_seconds must be at least 1, not {params['interval_seconds']}.")
    if params["retry_window"] < 0:
        module.fail_json(msg=f"retry_window must be 0 or more seconds, not {params['retry_window']}.")

    cache = None
    if params["manifest_cache_path"]:
        try:
            os.makedirs(params["manifest_cache_path"], exist_ok=True)
        except OSError as exc:
            module.fail_json(msg=f"Could not create manifest_cache_path {params['manifest_cache_path']}:"
                                 f" {exc.strerror or exc}.")
        if not os.access(params["manifest_cache_path"], os.W_OK):
            module.fail_json(msg=f"manifest_cache_path {params['manifest_cache_path']} is not writable.")
        cache = ManifestCache(params["manifest_cache_path"])

    try:
        client = build_registry_client(params, pool_size=params["concurrency"],
                                       retry_window=float(params["retry_window"]))
    except RegistryError as exc:
        module.fail_json(msg=exc.message)
        return
    try:
        images = [parse_image_reference(text, client.host) for text in params["images"] or []]
    except ImageReferenceError as exc:
        client.close()
        module.fail_json(msg=str(exc))
        return

    walker = ManifestWalker(
        client,
        concurrency=params["concurrency"],
        blob_check=params["blob_check"],
        platforms=params["platforms"],
        descend=not (params["mirror"] and params["catalog"]),
        cache=cache,
    )
    # The previous run's state: the report file, or where none is kept (an AWX job), the last push.
    previous, unread_push = load_previous_run(params["report_path"], client.base_url, client.host,
                                              params["pushgateway_url"], params["pushgateway_job"],
                                              timeout=float(params["timeout"]))
    try:
        run = run_verification(
            client, walker, images=images, repositories=params["repositories"],
            previous=previous, mirror=params["mirror"],
            interval_seconds=params["interval_seconds"], blob_check=params["blob_check"],
        )
    finally:
        client.close()
    _write_outputs(module, run.report, run.metrics)
    if params["pushgateway_url"]:
        warning = push_run_metrics(run, params["pushgateway_url"], client.host, job=params["pushgateway_job"],
                                   timeout=float(params["timeout"]), unread=unread_push)
        if warning:
            module.warn(warning)
    if run.result is None:
        module.fail_json(msg=run.error, ok=False, verified=False, images=run.report["images"],
                         verdicts=run.report["verdicts"])
    if not run.result.ok and params["fail_on_broken"] and not params["mirror"]:
        module.fail_json(changed=False, **run.shaped)
    module.exit_json(changed=False, **run.shaped)


if __name__ == "__main__":
    main()

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a verification run tells its readers: the returned data, the one-line verdict, the JSON report
and the Prometheus metrics. One implementation for the module and for the scheduled probe.

No Ansible imports. The metrics are documented in one table, in
roles/registry_probe/README.md; keep the two in step.
"""

from __future__ import annotations

import json
import time
import typing as t

from ._image_reference import ImageReference
from ._manifest_walk import (
    VERDICT_BROKEN,
    VERDICT_UNVERIFIED,
    VERDICTS,
    BrokenObject,
    ImageResult,
    ManifestWalker,
    WalkError,
    WalkResult,
)
from ._registry_client import RegistryClient
from ._report_files import Metric, PushError, push_metrics, read_pushed_group

# The Pushgateway job label both the probe and the module push under unless told otherwise.
DEFAULT_PUSHGATEWAY_JOB = "selfhosted_registry_probe"

# One series per broken image carries its repository and tag for the alert; beyond this many the
# counts still say how many are broken, and the report names them all.
MAX_BROKEN_IMAGE_SERIES = 100


class KnownBroken(t.NamedTuple):
    """An image a run found broken. It stays known, and its alert firing, until a run checks it again and
    finds it whole (or, in catalog mode, finds its tag gone): a run that cannot check it carries it."""

    reference: str
    repository: str
    tag: str  # the tag, or the digest of an image asked for by digest (the alert's tag label)
    since: float  # when a run first found it broken
    checked: float  # when a run last checked it and found it broken; older than the run: carried


class PreviousRun(t.NamedTuple):
    """What the last report said, carried into the next one so a failed run does not erase history."""

    last_success_timestamp: float  # when a run last read the registry and its catalog; 0: never
    failed_runs: int  # consecutive runs that could not verify everything (a verdict on every image)
    broken: t.Tuple[KnownBroken, ...] = ()


NO_PREVIOUS_RUN = PreviousRun(0.0, 0)


def _known_broken(entry: t.Any) -> KnownBroken:
    if not isinstance(entry, dict):
        raise TypeError("not an object")
    names = [entry[key] for key in ("reference", "repository", "tag")]
    if not all(isinstance(name, str) and name for name in names):
        raise TypeError("a name is not a string")
    return KnownBroken(*names, since=float(entry["since"]), checked=float(entry["checked"]))


def read_previous_run(report_path: t.Optional[str], registry_url: str) -> PreviousRun:
    """The carried state from an earlier report of the same registry; anything unreadable, or a report
    of another registry (the URL changed), counts as no earlier run."""
    if not report_path:
        return NO_PREVIOUS_RUN
    try:
        with open(report_path, encoding="utf-8") as handle:
            report = json.load(handle)
        if report.get("registry") != registry_url:
            return NO_PREVIOUS_RUN
        last_success = float(report.get("last_success_timestamp") or 0)
        failed_runs = int(report.get("failed_runs") or 0)
        broken = tuple(_known_broken(entry) for entry in report.get("known_broken") or [])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return NO_PREVIOUS_RUN
    return PreviousRun(max(last_success, 0.0), max(failed_runs, 0), broken)


def previous_run_from_pushed(samples: t.Mapping[str, t.Sequence[t.Tuple[t.Mapping[str, str], float]]]) -> PreviousRun:
    """The carried state from what the last run pushed to a Pushgateway (read_pushed_group): the memory of
    a scheduled job that keeps no files, so its failure count and broken images survive between runs."""

    def value(name: str) -> float:
        found = samples.get(name) or [({}, 0.0)]
        return found[0][1]

    checked = {(labels.get("repository"), labels.get("tag")): number
               for labels, number in samples.get("registry_verify_image_broken_checked_timestamp_seconds", [])}
    broken = []
    for labels, number in samples.get("registry_verify_image_broken", []):
        repository, tag = labels.get("repository"), labels.get("tag")
        if number != 1 or not repository or not tag:
            continue
        when = checked.get((repository, tag), 0.0)
        reference = f"{repository}@{tag}" if tag.startswith("sha256:") else f"{repository}:{tag}"
        broken.append(KnownBroken(reference, repository, tag, since=when, checked=when))
    return PreviousRun(max(value("registry_verify_last_success_timestamp_seconds"), 0.0),
                       max(int(value("registry_verify_failed_runs")), 0), tuple(sorted(broken)))


def verdict_lists(images: t.Iterable[t.Dict[str, t.Any]]) -> t.Dict[str, t.List[str]]:
    """The references under each verdict: what a playbook or an AWX workflow branches on."""
    lists: t.Dict[str, t.List[str]] = {verdict: [] for verdict in VERDICTS}
    for image in images:
        lists[image["verdict"]].append(image["reference"])
    return lists


def unverified_images(images: t.Sequence[ImageReference], reason: str) -> t.List[t.Dict[str, t.Any]]:
    """Images asked for by name when the registry could not be read at all: each one unverified, with why."""
    return [
        dict(ImageResult(
            reference=str(image), repository=image.repository, tag=image.tag, digest=image.digest, media_type=None,
            ok=False, verdict=VERDICT_UNVERIFIED, orphan_index=False, reason=f"{image}: {reason}", children=[],
        )._asdict())
        for image in images
    ]


def shape_result(result: WalkResult) -> t.Dict[str, t.Any]:
    """The walk's result as plain data (module return values and the JSON report)."""
    return {
        "ok": result.ok,
        "summary": result.summary._asdict(),
        "images": [
            dict(image._asdict(), children=[child._asdict() for child in image.children]) for image in result.images
        ],
        "verdicts": verdict_lists(image._asdict() for image in result.images),
        "broken": [broken._asdict() for broken in result.broken],
        "unverified": [unverified._asdict() for unverified in result.unverified],
        "not_found": [missing._asdict() for missing in result.not_found],
        "repository_errors": [error._asdict() for error in result.repository_errors],
    }


def first_per_image(findings: t.Sequence[BrokenObject]) -> t.List[BrokenObject]:
    """The first finding of each image, in order: one image's many missing objects say one thing."""
    seen: t.Set[str] = set()
    first = []
    for finding in findings:
        if finding.reference not in seen:
            seen.add(finding.reference)
            first.append(finding)
    return first


def result_message(result: WalkResult) -> str:
    """One line: broken images first (damage), then what could not be verified (a probe error)."""
    summary = result.summary
    if result.ok:
        return f"All {summary.images} images verified ({summary.manifests} manifests, {summary.blobs} blobs)."
    parts = []
    if result.broken:
        details = "; ".join(broken.message.rstrip(".") for broken in result.broken)
        parts.append(f"{summary.broken_images} of {summary.images} images are broken: {details}.")
    if result.not_found:
        details = "; ".join(missing.message.rstrip(".") for missing in result.not_found)
        parts.append(f"{summary.not_found_images} of {summary.images} images do not exist (check the names): {details}.")
    if result.unverified or result.repository_errors:
        reasons = [finding.message.rstrip(".") for finding in first_per_image(result.unverified)]
        reasons += [error.message.rstrip(".") for error in result.repository_errors]
        counted = []
        if summary.unverified_images:
            counted.append(f"{summary.unverified_images} images")
        if summary.repository_errors:
            counted.append(f"{summary.repository_errors} repositories")
        parts.append(f"Could not verify {' and '.join(counted)} (the registry did not answer for them"
                     f" or refused the credentials, which is not damage): {'; '.join(reasons)}.")
    return " ".join(parts)


def carried_state(previous: PreviousRun, result: t.Optional[WalkResult], finished: float,
                  catalog: bool = False) -> PreviousRun:
    """The state the next run reads.

    A run that read the catalog is a success (it ran), whatever it found broken. The failure count
    resets only when every image got a verdict: a catalog, a tag list or objects the registry did not
    answer for leave images unverified, and an alert on two such runs in a row is what tells a
    throttled or half-down registry from a registry restarted once by its weekly garbage collection.

    A broken image is forgotten only when this run checked it and found it whole or gone; an image
    this run could not check (the whole run failed, its objects did not answer, its repository's tag
    list could not be read, or it was not asked about) keeps its broken state, carried, so its alert
    does not resolve on a run that proved nothing.
    """
    if result is None:
        return previous._replace(failed_runs=previous.failed_runs + 1)
    complete = not (result.unverified or result.repository_errors)
    checked = {image.reference: image for image in result.images}
    unread_repositories = {error.repository for error in result.repository_errors}
    earlier = {known.reference: known for known in previous.broken}
    broken: t.Dict[str, KnownBroken] = {}
    for image in result.images:
        if image.verdict == VERDICT_BROKEN:
            first = earlier.get(image.reference)
            broken[image.reference] = KnownBroken(
                image.reference, image.repository, image.tag or image.digest or "",
                since=first.since if first else finished, checked=finished)
    for known in previous.broken:
        image = checked.get(known.reference)
        if image is not None:
            carry = image.verdict == VERDICT_UNVERIFIED
        else:  # catalog mode reads every tag list: a tag it did not list is gone, unless its list was unreadable
            carry = known.repository in unread_repositories if catalog else True
        if carry and known.reference not in broken:
            broken[known.reference] = known
    return PreviousRun(finished, 0 if complete else previous.failed_runs + 1,
                       tuple(sorted(broken.values(), key=lambda known: known.reference)))


def build_report(
    registry_url: str,
    shaped: t.Optional[t.Dict[str, t.Any]],
    state: PreviousRun,
    finished: float,
    error: t.Optional[str] = None,
    **extra: t.Any,
) -> t.Dict[str, t.Any]:
    """The JSON report: the result (or the error that stopped the run) and the carried state."""
    report: t.Dict[str, t.Any] = dict(shaped or {"ok": False})
    report.update(
        extra,
        registry=registry_url,
        verified=shaped is not None,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
        last_success_timestamp=state.last_success_timestamp,
        failed_runs=state.failed_runs,
        known_broken=[dict(known._asdict(), carried=known.checked < finished) for known in state.broken],
    )
    if error is not None:
        report["error"] = error
    return report


def verify_metrics(
    registry: str,
    started: float,
    finished: float,
    shaped: t.Optional[t.Dict[str, t.Any]],
    state: PreviousRun,
    interval_seconds: t.Optional[int] = None,
) -> t.List[Metric]:
    """Gauges only (each describes the last run), labelled by registry; per-image series only when broken."""
    base = {"registry": registry}
    metrics = [
        Metric("registry_verify_up", "1 when the last run could read the registry and its catalog, 0 when not.",
               "gauge", 1 if shaped else 0, base),
        Metric("registry_verify_last_run_timestamp_seconds", "When the last run finished.", "gauge", finished, base),
        Metric("registry_verify_last_success_timestamp_seconds",
               "When a run last read the registry and its catalog (0: never).", "gauge",
               state.last_success_timestamp, base),
        Metric("registry_verify_failed_runs",
               "Consecutive runs that left images unverified (registry, catalog, a tag list or objects did not answer).",
               "gauge", state.failed_runs, base),
        Metric("registry_verify_duration_seconds", "How long the last run took.", "gauge", finished - started, base),
    ]
    if interval_seconds:
        metrics.append(Metric("registry_verify_interval_seconds", "How often the probe is scheduled to run.",
                              "gauge", interval_seconds, base))
    summary = shaped["summary"] if shaped else {}
    for name, key, text in () if not shaped else (
        ("registry_verify_images", "images", "Images (tags) the last run walked."),
        ("registry_verify_broken_images", "broken_images", "Images with a missing or damaged object."),
        ("registry_verify_unverified_images", "unverified_images",
         "Images the registry did not answer for (throttled, timed out, refused): not verified, not broken."),
        ("registry_verify_not_found_images", "not_found_images", "Images asked for by name that do not exist."),
        ("registry_verify_repository_errors", "repository_errors", "Repositories whose tag list could not be read."),
        ("registry_verify_broken_objects", "broken_objects", "Unique missing or damaged objects."),
        ("registry_verify_requests", "requests", "HTTP requests the last run sent."),
    ):
        metrics.append(Metric(name, text, "gauge", summary[key], base))
    return metrics + _broken_image_metrics(base, state, finished)


def _broken_image_metrics(base: t.Dict[str, str], state: PreviousRun, finished: float) -> t.List[Metric]:
    """Per broken image, found by this run or carried from an earlier one: the same labels either way, so
    the alert on it neither resolves nor restarts while no run can check the image."""
    shown = state.broken[:MAX_BROKEN_IMAGE_SERIES]

    def labels(known: KnownBroken) -> t.Dict[str, str]:
        return dict(base, repository=known.repository, tag=known.tag)

    # Grouped by name: the exposition format wants every series of a metric together.
    return (
        [Metric("registry_verify_image_broken", "1 for each image that cannot be pulled.", "gauge", 1, labels(known))
         for known in shown]
        + [Metric("registry_verify_image_broken_checked_timestamp_seconds",
                  "When a run last checked the broken image and found it broken.", "gauge", known.checked,
                  labels(known)) for known in shown]
        + [Metric("registry_verify_image_broken_carried",
                  "1 when the last run could not check the broken image and carried its state.", "gauge",
                  1 if known.checked < finished else 0, labels(known)) for known in shown]
    )


class VerifyRun(t.NamedTuple):
    """One run and everything its readers get: result (None when the registry could not be read at all)."""

    result: t.Optional[WalkResult]
    error: t.Optional[str]
    shaped: t.Optional[t.Dict[str, t.Any]]
    report: t.Dict[str, t.Any]
    metrics: t.List[Metric]


def run_verification(
    client: RegistryClient,
    walker: ManifestWalker,
    images: t.Optional[t.Sequence[ImageReference]] = None,
    repositories: t.Optional[t.Sequence[str]] = None,
    previous: PreviousRun = NO_PREVIOUS_RUN,
    interval_seconds: t.Optional[int] = None,
    **report_extra: t.Any,
) -> VerifyRun:
    """Verify ``images``, or the whole catalog when none are given, and build the report and metrics."""
    started = time.time()
    try:
        result = walker.verify(images) if images else walker.verify_catalog(repositories)
    except WalkError as exc:
        finished = time.time()
        state = carried_state(previous, None, finished)
        # Images asked for by name still get their verdict: unverified, with the reason.
        failed = {"images": unverified_images(images or [], str(exc))}
        failed["verdicts"] = verdict_lists(failed["images"])
        return VerifyRun(
            None, str(exc), None,
            build_report(client.base_url, None, state, finished, error=str(exc), **failed, **report_extra),
            verify_metrics(client.host, started, finished, None, state, interval_seconds),
        )
    finished = time.time()
    state = carried_state(previous, result, finished, catalog=not images)
    shaped = shape_result(result)
    shaped["msg"] = result_message(result)
    shaped["verified"] = True
    return VerifyRun(
        result, None, shaped,
        build_report(client.base_url, shaped, state, finished, **report_extra),
        verify_metrics(client.host, started, finished, shaped, state, interval_seconds),
    )


def load_previous_run(report_path: t.Optional[str], registry_url: str, registry: str,
                      pushgateway_url: t.Optional[str] = None, job: str = DEFAULT_PUSHGATEWAY_JOB,
                      timeout: float = 10.0) -> t.Tuple[PreviousRun, t.Optional[str]]:
    """The previous run's state: the report file of this registry; where there is none (an AWX job or a
    container started afresh keeps no files), what the last run pushed to the Pushgateway group job +
    registry. With a warning when that group cannot be read (the run then starts as a first run does)."""
    previous = read_previous_run(report_path, registry_url)
    if previous != NO_PREVIOUS_RUN or not pushgateway_url:
        return previous, None
    try:
        return previous_run_from_pushed(read_pushed_group(pushgateway_url, job, {"registry": registry},
                                                          timeout=timeout)), None
    except PushError as exc:
        return NO_PREVIOUS_RUN, f"{exc} The failure count and broken images of earlier runs are not carried."


def push_run_metrics(
    run: VerifyRun, url: str, registry: str, job: str = DEFAULT_PUSHGATEWAY_JOB, timeout: float = 10.0,
    unread: t.Optional[str] = None,
) -> t.Optional[str]:
    """Push a run's metrics to a Pushgateway, replacing the group job + registry; one warning, or None.

    A Pushgateway that is down must never hide the verdict or change it: the caller reports the
    returned sentence as a warning and carries on with the run's own outcome. ``unread`` is
    load_previous_run's warning: a Pushgateway that is down fails the read and the push alike, and
    the two are said in one warning.
    """
    try:
        push_metrics(url, job, {"registry": registry}, run.metrics, timeout=timeout)
    except PushError as exc:
        warning = f"{exc} The metrics of this run were not pushed; the verdict is unchanged."
        if unread:
            warning += " Nor were the failure count and broken images of earlier runs read from it."
        return warning
    return unread

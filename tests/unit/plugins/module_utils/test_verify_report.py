# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a run tells its readers: the carried state, the metrics' bounds, the message's two verdicts."""

from __future__ import annotations

import pathlib
import subprocess

from ansible_collections.selfhosted.registry.plugins.module_utils._manifest_walk import (
    BrokenObject,
    ImageResult,
    RepositoryError,
    WalkResult,
    WalkSummary,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._report_files import render_metrics
from ansible_collections.selfhosted.registry.plugins.module_utils._verify_report import (
    MAX_BROKEN_IMAGE_SERIES,
    NO_PREVIOUS_RUN,
    KnownBroken,
    PreviousRun,
    carried_state,
    first_per_image,
    read_previous_run,
    result_message,
    shape_result,
    previous_run_from_pushed,
    verdict_lists,
    verify_metrics,
)


def image(reference: str, verdict: str) -> ImageResult:
    repository, tag = reference.split(":")
    return ImageResult(reference, repository, tag, None, None, verdict == "ok", verdict, False, None, [])


def finding(reference: str, status: int, message: str) -> BrokenObject:
    return BrokenObject(reference, [reference], "manifest", None, status, None, f"{reference}: {message}")


def result(images: list[ImageResult], broken: list[BrokenObject] = (), unverified: list[BrokenObject] = (),
           repository_errors: list[RepositoryError] = ()) -> WalkResult:
    summary = WalkSummary(
        images=len(images), broken_images=sum(i.verdict == "broken" for i in images),
        unverified_images=sum(i.verdict == "unverified" for i in images),
        not_found_images=sum(i.verdict == "not_found" for i in images), repository_errors=len(repository_errors),
        manifests=len(images), blobs=0, requests=len(images), broken_objects=len(broken),
        unverified_objects=len(unverified), foreign_layers=0)
    return WalkResult(all(i.ok for i in images) and not repository_errors, summary, images, list(broken),
                      list(unverified), [], list(repository_errors))


def test_a_run_that_reads_the_catalog_is_a_success_and_only_a_complete_one_resets_the_failures() -> None:
    previous = PreviousRun(100.0, 3)
    assert carried_state(previous, None, 200.0) == PreviousRun(100.0, 4)
    assert carried_state(previous, result([image("a:1", "broken")], [finding("a:1", 404, "gone")]), 200.0) == (
        PreviousRun(200.0, 0, (KnownBroken("a:1", "a", "1", since=200.0, checked=200.0),)))
    unverified = result([image("a:1", "unverified")], unverified=[finding("a:1", 503, "answered HTTP 503.")])
    assert carried_state(previous, unverified, 200.0) == PreviousRun(200.0, 4)


def test_an_unreadable_previous_report_counts_as_no_previous_run(tmp_path: pathlib.Path) -> None:
    report = tmp_path / "probe.json"
    assert read_previous_run(str(report), "https://r:5000") == NO_PREVIOUS_RUN
    for text in ("{", "[]", '{"registry": "https://r:5000", "last_success_timestamp": "soon"}', "[" * 100000):
        report.write_text(text)
        assert read_previous_run(str(report), "https://r:5000") == NO_PREVIOUS_RUN
    report.write_text('{"registry": "https://r:5000", "last_success_timestamp": 1700000000.5, "failed_runs": 2,'
                      ' "known_broken": [{"reference": "a:1", "repository": "a", "tag": "1", "since": 5, "checked": 7}]}')
    assert read_previous_run(str(report), "https://r:5000") == PreviousRun(
        1700000000.5, 2, (KnownBroken("a:1", "a", "1", 5.0, 7.0),))
    # Carried state belongs to one registry: the report of another is no earlier run of this one.
    assert read_previous_run(str(report), "https://other:5000") == NO_PREVIOUS_RUN
    report.write_text('{"registry": "https://r:5000", "known_broken": [{"reference": "a:1"}]}')
    assert read_previous_run(str(report), "https://r:5000") == NO_PREVIOUS_RUN


def test_the_message_keeps_broken_and_unverified_apart() -> None:
    walked = result(
        [image("a:1", "broken"), image("b:1", "unverified")],
        broken=[finding("a:1", 404, "child manifest sha256:aa answered 404 MANIFEST_UNKNOWN.")],
        unverified=[finding("b:1", 429, "manifest answered 429 TOOMANYREQUESTS.")],
        repository_errors=[RepositoryError("c", 404, "NAME_UNKNOWN", "The tag list of c of r:5000 answered 404.")])
    assert result_message(walked) == (
        "1 of 2 images are broken: a:1: child manifest sha256:aa answered 404 MANIFEST_UNKNOWN. "
        "Could not verify 1 images and 1 repositories (the registry did not answer for them or refused the credentials, which is not damage):"
        " b:1: manifest answered 429 TOOMANYREQUESTS; The tag list of c of r:5000 answered 404.")


def test_first_per_image_keeps_the_first_finding_of_each_image_in_order() -> None:
    findings = [finding("a:1", 404, "first."), finding("b:1", 503, "only."), finding("a:1", 404, "second.")]
    assert first_per_image(findings) == findings[:2]


def test_metrics_pass_promtool_and_bound_the_per_image_series(tmp_path: pathlib.Path) -> None:
    many = [image(f"app:{n}", "broken") for n in range(MAX_BROKEN_IMAGE_SERIES + 20)]
    walked = result(many, broken=[finding(i.reference, 404, "gone.") for i in many])
    state = carried_state(NO_PREVIOUS_RUN, walked, 12.5, catalog=True)
    metrics = verify_metrics("r:5000", 10.0, 12.5, shape_result(walked), state, 900)
    text = render_metrics(metrics)
    assert text.count("registry_verify_image_broken{") == MAX_BROKEN_IMAGE_SERIES
    assert f'registry_verify_broken_images{{registry="r:5000"}} {MAX_BROKEN_IMAGE_SERIES + 20}' in text
    assert "_total" not in text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr


def test_a_run_that_read_nothing_exports_no_counts() -> None:
    text = render_metrics(verify_metrics("r:5000", 10.0, 11.0, None, PreviousRun(5.0, 1)))
    names = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
    assert names == {"registry_verify_up", "registry_verify_last_run_timestamp_seconds",
                     "registry_verify_last_success_timestamp_seconds", "registry_verify_failed_runs",
                     "registry_verify_duration_seconds"}
    assert 'registry_verify_up{registry="r:5000"} 0' in text


def known(reference: str, since: float, checked: float) -> KnownBroken:
    repository, tag = reference.split(":")
    return KnownBroken(reference, repository, tag, since, checked)


def test_a_broken_image_is_carried_until_a_run_checks_it_and_finds_it_whole() -> None:
    previous = PreviousRun(100.0, 0, (known("a:1", 50.0, 100.0), known("b:1", 60.0, 100.0), known("c:1", 70.0, 100.0)))
    # The whole run failed (credentials rejected, registry down): every broken image is carried as it was.
    assert carried_state(previous, None, 200.0).broken == previous.broken
    # a:1 could not be checked, b:1 was found whole, c:1 is still broken: checked again, since kept.
    walked = result([image("a:1", "unverified"), image("b:1", "ok"), image("c:1", "broken")],
                    broken=[finding("c:1", 404, "gone.")], unverified=[finding("a:1", 503, "503.")])
    assert carried_state(previous, walked, 200.0).broken == (known("a:1", 50.0, 100.0), known("c:1", 70.0, 200.0))


def test_catalog_mode_forgets_a_broken_tag_that_is_gone_but_not_one_whose_tag_list_failed() -> None:
    previous = PreviousRun(100.0, 0, (known("gone:1", 50.0, 100.0), known("unread:1", 50.0, 100.0)))
    walked = result([image("other:1", "ok")],
                    repository_errors=[RepositoryError("unread", 503, None, "The tag list of unread answered 503.")])
    assert carried_state(previous, walked, 200.0, catalog=True).broken == (known("unread:1", 50.0, 100.0),)
    # Images asked for by name: one this run did not ask about was not checked, so it is carried.
    assert carried_state(previous, result([image("other:1", "ok")]), 200.0).broken == previous.broken


def test_carried_images_keep_their_series_and_say_so_when_the_run_read_nothing() -> None:
    state = carried_state(PreviousRun(100.0, 1, (known("a:1", 50.0, 100.0),)), None, 200.0)
    text = render_metrics(verify_metrics("r:5000", 190.0, 200.0, None, state))
    assert 'registry_verify_image_broken{registry="r:5000",repository="a",tag="1"} 1' in text
    assert 'registry_verify_image_broken_carried{registry="r:5000",repository="a",tag="1"} 1' in text
    assert 'registry_verify_image_broken_checked_timestamp_seconds{registry="r:5000",repository="a",tag="1"} 100' in text
    assert 'registry_verify_failed_runs{registry="r:5000"} 2' in text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_verdict_lists_name_every_image_once_under_its_verdict() -> None:
    images = [image("a:1", "ok"), image("b:1", "broken"), image("c:1", "unverified"), image("d:1", "not_found")]
    assert verdict_lists(i._asdict() for i in images) == {
        "ok": ["a:1"], "broken": ["b:1"], "unverified": ["c:1"], "not_found": ["d:1"]}


def test_the_state_read_back_from_a_pushgateway_group_is_the_state_that_was_pushed() -> None:
    state = PreviousRun(100.0, 2, (known("a:1", 90.0, 90.0),
                                   KnownBroken(f"b@sha256:{'c' * 64}", "b", f"sha256:{'c' * 64}", 80.0, 80.0)))
    pushed: dict = {}
    for metric in verify_metrics("r:5000", 95.0, 100.0, None, state, 900):
        pushed.setdefault(metric.name, []).append((dict(metric.labels), float(metric.value)))
    assert previous_run_from_pushed(pushed) == state
    assert previous_run_from_pushed({}) == NO_PREVIOUS_RUN

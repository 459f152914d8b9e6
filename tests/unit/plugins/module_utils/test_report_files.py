from __future__ import annotations

import json
import os

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._report_files import (
    Metric,
    PushError,
    _grouping_segment,
    push_metrics,
    pushgateway_url_problem,
    redact_url,
    render_metrics,
    write_json_report,
    write_metrics,
    write_report_files,
)


def test_metrics_render_help_and_type_once_per_name_with_escaped_labels():
    text = render_metrics([
        Metric("registry_image_broken", "Broken images.", "gauge", 1, {"repository": 'a"b\\c', "tag": "x\ny"}),
        Metric("registry_image_broken", "Broken images.", "gauge", 0, {"repository": "ok", "tag": "latest"}),
    ])
    assert text.splitlines() == [
        "# HELP registry_image_broken Broken images.",
        "# TYPE registry_image_broken gauge",
        'registry_image_broken{repository="a\\"b\\\\c",tag="x\\ny"} 1',
        'registry_image_broken{repository="ok",tag="latest"} 0',
    ]


def test_timestamps_keep_every_second_and_fractions_keep_their_digits():
    text = render_metrics([
        Metric("last_run_timestamp_seconds", "Last run.", "gauge", 1795950123),
        Metric("duration_seconds", "Duration.", "gauge", 0.123456789),
    ])
    assert "last_run_timestamp_seconds 1795950123\n" in text
    assert "duration_seconds 0.123456789\n" in text


@pytest.mark.parametrize("name", ["9starts_with_digit", "has-dash", ""])
def test_invalid_metric_names_are_refused(name):
    with pytest.raises(ValueError):
        render_metrics([Metric(name, "x", "gauge", 1)])


def test_writes_replace_the_file_whole_and_leave_no_temporary_files(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("old")
    write_json_report(str(report), {"ok": True, "broken": []})
    assert json.loads(report.read_text()) == {"broken": [], "ok": True}
    metrics = tmp_path / "probe.prom"
    write_metrics(str(metrics), [Metric("up", "Up.", "gauge", 1)])
    assert metrics.read_text().endswith("up 1\n")
    assert sorted(os.listdir(tmp_path)) == ["probe.prom", "report.json"]
    assert oct(report.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.1:9091", None),
    ("https://push.example/prefix", None),
    ("ftp://push.example", "must start with http:// or https:// and name a host"),
    ("http://", "must start with http:// or https:// and name a host"),
    ("http://push.example:port", "is not a URL"),
    ("http://push.example:0", "names port 0"),
    ("http://user:secret@push.example", "must not carry credentials"),
    ("http://push.example/?x=1", "must not carry a query or a fragment"),
])
def test_pushgateway_urls_are_checked(url, problem):
    assert pushgateway_url_problem(url) == problem


def test_a_refused_url_is_named_without_its_credentials():
    with pytest.raises(PushError) as raised:
        push_metrics("http://user:secret@push.example", "job", {}, [])
    assert "secret" not in str(raised.value) and "http://push.example" in str(raised.value)
    assert redact_url("https://a:b@h:1/p") == "https://h:1/p"


def test_grouping_values_with_a_slash_or_empty_use_the_base64_form():
    assert _grouping_segment("registry", "127.0.0.1:5000") == "registry/127.0.0.1%3A5000"
    assert _grouping_segment("registry", "a/b") == "registry@base64/YS9i"
    assert _grouping_segment("registry", "") == "registry@base64/="


@pytest.mark.parametrize("failure", ["missing directory", "target is a directory", "disk full"])
def test_a_failed_write_names_the_file_asked_for(tmp_path, monkeypatch, failure):
    target = tmp_path / "reports" / "scan.json"
    if failure == "target is a directory":
        target.parent.mkdir()
        target.mkdir()
    elif failure == "disk full":
        target.parent.mkdir()

        def full(*_args):
            raise OSError(28, "No space left on device")  # what a full disk raises: no filename at all
        monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        write_json_report(str(target), {"ok": True})
    assert caught.value.filename == str(target)
    assert not list(tmp_path.rglob(".tmp-*"))


def test_report_files_are_written_where_a_path_is_given(tmp_path):
    metrics = [Metric("registry_storage_clean", "1 when clean.", "gauge", 1)]
    report, prom = tmp_path / "r.json", tmp_path / "m.prom"
    assert write_report_files(str(report), {"clean": True}, str(prom), metrics) is None
    assert json.loads(report.read_text()) == {"clean": True}
    assert prom.read_text() == render_metrics(metrics)
    assert write_report_files(None, {"clean": True}, "", metrics) is None
    assert sorted(os.listdir(tmp_path)) == ["m.prom", "r.json"]


def test_a_report_file_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "missing" / "r.json"
    problem = write_report_files(str(missing), {}, None, [])
    assert problem is not None and problem.startswith(f"cannot write {missing}") and "\n" not in problem

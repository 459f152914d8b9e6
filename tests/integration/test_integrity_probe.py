# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The integrity probe on the real registry, installed and run as the registry_probe role's cron runs it.

"Could not verify" and "broken" stay apart: the incident is exit 1 with the broken tag in the metrics;
rejected credentials, an unreadable tag list or a held lock are never reported as broken images.
"""

from __future__ import annotations

import fcntl
import pathlib
import re
import subprocess
import typing as t

import pytest

from tests.harness.images import ImagePusher, make_layer
from tests.harness.incident import reproduce_incident
from tests.harness.probe import Probe
from tests.harness.registry import RegistryServer


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)


def gauge(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample, or None when the series is not there."""
    for line in metrics.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return None


@pytest.fixture
def probe_for(tmp_path: pathlib.Path) -> t.Callable[[RegistryServer], Probe]:
    return lambda server: Probe(tmp_path / "probe", server.url)


def test_a_healthy_catalog_is_exit_0_with_clean_metrics(
    registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher], probe_for: t.Callable[[RegistryServer], Probe]
) -> None:
    pusher = make_pusher(registry)
    pusher.push_index("infra-ci", "latest", platforms=("linux/amd64", "linux/arm64"), attestations=True)
    pusher.push_image("team/app", "v1")
    run = probe_for(registry).run()
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1].startswith("SUMMARY verified=yes images=2 broken=0 unverified=0")
    assert run.report is not None and run.report["ok"] is True and run.report["failed_runs"] == 0
    assert run.metrics is not None
    assert gauge(run.metrics, "registry_verify_up", registry=registry.host) == 1
    assert gauge(run.metrics, "registry_verify_interval_seconds", registry=registry.host) == 900
    assert gauge(run.metrics, "registry_verify_images", registry=registry.host) == 2
    assert "registry_verify_image_broken" not in run.metrics
    checked = promtool_check_metrics(run.metrics)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr


def test_the_incident_is_exit_1_naming_the_broken_tag_and_its_missing_children(
    registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher], probe_for: t.Callable[[RegistryServer], Probe]
) -> None:
    incident = reproduce_incident(registry, make_pusher(registry))
    run = probe_for(registry).run()
    assert run.returncode == 1, run.stdout + run.stderr
    broken_lines = [line for line in run.stdout.splitlines() if line.startswith("BROKEN ")]
    assert len(broken_lines) == 1 and broken_lines[0].startswith("BROKEN image=infra-ci:latest object=manifest")
    assert run.report is not None
    missing = {entry["digest"] for entry in run.report["broken"] if entry["object_type"] == "manifest"}
    assert missing == set(incident.missing_manifests)
    assert run.metrics is not None
    assert gauge(run.metrics, "registry_verify_image_broken", repository="infra-ci", tag="latest") == 1
    assert gauge(run.metrics, "registry_verify_broken_images", registry=registry.host) == 1
    assert gauge(run.metrics, "registry_verify_failed_runs", registry=registry.host) == 0
    assert promtool_check_metrics(run.metrics).returncode == 0


def test_rejected_credentials_are_a_probe_error_carried_from_run_to_run_never_a_broken_image(
    registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    probe_for: t.Callable[[RegistryServer], Probe],
) -> None:
    make_pusher(registry_basic).push_image("infra-ci", "latest")
    probe = probe_for(registry_basic)
    probe.set_credentials(registry_basic.readonly_username or "", registry_basic.readonly_password or "")
    good = probe.run()
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.report is not None
    first_success = good.report["last_success_timestamp"]

    wrong_password = "Wr0ng-" + (registry_basic.readonly_password or "")[::-1]
    probe.set_credentials(registry_basic.readonly_username or "", wrong_password)
    runs = [probe.run(), probe.run()]
    for count, run in enumerate(runs, start=1):
        assert run.returncode == 2, run.stdout + run.stderr
        assert run.stdout.splitlines() == [
            f"ERROR Registry {registry_basic.host} rejected the credentials for the v2 API of {registry_basic.host}.",
            "SUMMARY verified=no",
        ]
        assert run.report is not None and run.report["verified"] is False and run.report["failed_runs"] == count
        assert run.report["last_success_timestamp"] == first_success
        assert run.metrics is not None
        assert gauge(run.metrics, "registry_verify_up", registry=registry_basic.host) == 0
        assert gauge(run.metrics, "registry_verify_failed_runs", registry=registry_basic.host) == count
        assert gauge(run.metrics, "registry_verify_last_success_timestamp_seconds",
                     registry=registry_basic.host) == first_success
        assert "registry_verify_image_broken" not in run.metrics
        for secret in (wrong_password, registry_basic.readonly_password or ""):
            assert secret not in run.stdout + run.stderr + probe.report_path.read_text() + run.metrics


def test_an_unreadable_tag_list_is_reported_and_every_other_repository_verified(
    registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher], probe_for: t.Callable[[RegistryServer], Probe]
) -> None:
    pusher = make_pusher(registry)
    pusher.push_image("good", "v1")
    # A repository with a layer and no manifest: the catalog lists it, its tag list answers 404.
    pusher.push_blob("half-pushed", make_layer("never finished\n"))
    assert "half-pushed" in pusher.catalog()
    run = probe_for(registry).run()
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout.splitlines()[0] == (
        f"UNVERIFIED repository=half-pushed status=404 The tag list of half-pushed of {registry.host}"
        " answered 404 NAME_UNKNOWN.")
    assert run.stdout.splitlines()[-1].startswith("SUMMARY verified=yes images=1 broken=0 unverified=0 repository_errors=1")
    assert run.report is not None and [image["reference"] for image in run.report["images"]] == ["good:v1"]
    assert run.report["images"][0]["ok"] is True
    assert run.metrics is not None
    assert gauge(run.metrics, "registry_verify_repository_errors", registry=registry.host) == 1
    assert gauge(run.metrics, "registry_verify_failed_runs", registry=registry.host) == 1
    assert "registry_verify_image_broken" not in run.metrics


def test_a_run_that_finds_the_lock_held_does_nothing(
    registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher], probe_for: t.Callable[[RegistryServer], Probe]
) -> None:
    make_pusher(registry).push_image("infra-ci", "latest")
    probe = probe_for(registry)
    with open(probe.lock_path, "w", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run = probe.run()
    assert run.returncode == 3
    assert run.stdout == f"BUSY another probe run holds {probe.lock_path}; this run did nothing.\n"
    assert run.report is None and run.metrics is None
    assert probe.run().returncode == 0


def test_an_unreadable_credentials_file_is_one_sentence(
    registry: RegistryServer, probe_for: t.Callable[[RegistryServer], Probe]
) -> None:
    probe = probe_for(registry)
    probe.credentials_path.write_text('{"username": "x", "password": ')
    run = probe.run()
    assert run.returncode == 2
    assert run.stderr == f"ERROR registry-probe: The credentials file {probe.credentials_path} is not JSON.\n"
    assert run.stdout == "" and run.report is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--concurrency", "0"), "argument --concurrency: '0' is less than 1"),
        (("--retry-window", "-1"), "argument --retry-window: '-1' is less than 0"),
        (("--interval", "soon"), "argument --interval: 'soon' is not a whole number"),
    ],
)
def test_a_bad_command_line_is_one_error_line_and_exit_2(
    registry: RegistryServer, probe_for: t.Callable[[RegistryServer], Probe], extra: t.Tuple[str, ...], message: str
) -> None:
    run = probe_for(registry).run(*extra)
    assert run.returncode == 2
    assert run.stderr == f"ERROR registry-probe: {message}\n"
    assert run.stdout == "" and run.report is None

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe and registry_manifest_verify pushing to Debian's real prometheus-pushgateway.

Metrics appear under the group job + registry, a later run replaces them (a rebuilt tag's series is
gone), and a Pushgateway that is down is one warning that changes neither the verdict nor the exit status.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import typing as t

import pytest

from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.monitoring import Service
from tests.harness.probe import Probe
from tests.harness.pushgateway import samples, start_pushgateway
from tests.harness.registry import RegistryServer, free_port
from tests.integration.test_registry_manifest_verify_playbook import ANSIBLE_PLAYBOOK, run_playbook


@pytest.fixture
def pushgateway(tmp_path: pathlib.Path) -> t.Iterator[Service]:
    service = start_pushgateway(tmp_path)
    try:
        yield service
    finally:
        service.stop()


def test_the_probe_pushes_its_metrics_and_a_later_run_replaces_them(
    registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher], pushgateway: Service, tmp_path: pathlib.Path
) -> None:
    pusher = make_pusher(registry)
    reproduce_incident(registry, pusher)
    probe = Probe(tmp_path / "probe", registry.url)
    group = {("job", "selfhosted_registry_probe"), ("registry", registry.host)}

    run = probe.run("--pushgateway-url", pushgateway.url)
    assert run.returncode == 1 and not run.stderr, run.stdout + run.stderr
    broken = samples(pushgateway, "registry_verify_image_broken")
    assert broken == {frozenset(group | {("repository", "infra-ci"), ("tag", "latest")}): 1.0}
    assert samples(pushgateway, "registry_verify_broken_images") == {frozenset(group): 1.0}
    assert samples(pushgateway, "registry_verify_interval_seconds") == {frozenset(group): 900.0}

    # The rebuild: the tag points at a whole image again. The next run's PUT leaves no broken series.
    pusher.push_image("infra-ci", "latest")
    run = probe.run("--pushgateway-url", pushgateway.url)
    assert run.returncode == 0 and not run.stderr, run.stdout + run.stderr
    assert samples(pushgateway, "registry_verify_image_broken") == {}
    assert samples(pushgateway, "registry_verify_broken_images") == {frozenset(group): 0.0}
    # The textfile holds the same samples the Pushgateway got.
    assert run.metrics is not None and "registry_verify_broken_images{registry=" in run.metrics


def test_a_pushgateway_that_is_down_is_one_warning_and_the_verdict_stands(
    registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher], tmp_path: pathlib.Path
) -> None:
    reproduce_incident(registry, make_pusher(registry))
    down = f"http://127.0.0.1:{free_port()}"
    run = Probe(tmp_path / "probe", registry.url).run("--pushgateway-url", down)
    assert run.returncode == 1, run.stdout + run.stderr
    assert any(line.startswith("BROKEN image=infra-ci:latest") for line in run.stdout.splitlines())
    warnings = run.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"WARNING registry-probe: Could not reach the Pushgateway {down}")
    assert "verdict is unchanged" in warnings[0]
    assert run.metrics is not None and "registry_verify_image_broken{" in run.metrics


def test_a_bad_pushgateway_url_is_refused_before_the_run(registry: RegistryServer, tmp_path: pathlib.Path) -> None:
    run = Probe(tmp_path / "probe", registry.url).run("--pushgateway-url", "http://user:secret@pushgateway:9091")
    assert run.returncode == 2 and "must not carry credentials" in run.stderr and "secret" not in run.stderr
    assert run.report is None


def test_the_module_pushes_and_warns_once_when_the_pushgateway_is_down(
    registry: RegistryServer, pusher: ImagePusher, pushgateway: Service, tmp_path: pathlib.Path
) -> None:
    incident = reproduce_incident(registry, pusher)
    args = {"registry_url": registry.url, "images": [incident.reference], "pushgateway_job": "awx_probe"}
    process, result = run_playbook(tmp_path, dict(args, pushgateway_url=pushgateway.url))
    assert result["failed"] is True and result["ok"] is False and not result.get("warnings"), process.stdout
    group = {("job", "awx_probe"), ("registry", registry.host)}
    assert samples(pushgateway, "registry_verify_image_broken") == {
        frozenset(group | {("repository", "infra-ci"), ("tag", "latest")}): 1.0}

    down = f"http://127.0.0.1:{free_port()}"
    process, result = run_playbook(tmp_path, dict(args, pushgateway_url=down))
    assert result["failed"] is True and result["ok"] is False, process.stdout
    assert result["msg"].startswith("1 of 1 images are broken: infra-ci:latest")
    assert len(result["warnings"]) == 1 and f"Could not reach the Pushgateway {down}" in result["warnings"][0]


def test_the_module_carries_failed_runs_and_broken_images_through_the_pushgateway(
    registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher], pushgateway: Service,
    tmp_path: pathlib.Path,
) -> None:
    """The AWX probe keeps no files: what the last run pushed is its memory. A run with rejected credentials
    keeps the broken image's series (carried) and counts the failed run, so the alerts fire as for cron."""
    reproduce_incident(registry_basic, make_pusher(registry_basic))
    args = {"registry_url": registry_basic.url, "catalog": True, "pushgateway_url": pushgateway.url,
            "username": registry_basic.username, "interval_seconds": 900}
    group = {("job", "selfhosted_registry_probe"), ("registry", registry_basic.host)}
    image = frozenset(group | {("repository", "infra-ci"), ("tag", "latest")})

    process, result = run_playbook(tmp_path, dict(args, password=registry_basic.password))
    assert result["verdicts"]["broken"] == ["infra-ci:latest"], process.stdout
    assert samples(pushgateway, "registry_verify_image_broken") == {image: 1.0}
    assert samples(pushgateway, "registry_verify_interval_seconds") == {frozenset(group): 900.0}

    for failed_runs in (1, 2):
        process, result = run_playbook(tmp_path, dict(args, password="rotated"))
        assert result["failed"] is True and result["verified"] is False, process.stdout
        assert not result.get("warnings"), result
        assert samples(pushgateway, "registry_verify_failed_runs") == {frozenset(group): float(failed_runs)}
        assert samples(pushgateway, "registry_verify_image_broken") == {image: 1.0}
        assert samples(pushgateway, "registry_verify_image_broken_carried") == {image: 1.0}
        assert samples(pushgateway, "registry_verify_up") == {frozenset(group): 0.0}
    assert "rotated" not in process.stdout

    # A run that checks the image again (still broken) resets the failures and refreshes the check time.
    process, result = run_playbook(tmp_path, dict(args, password=registry_basic.password))
    assert samples(pushgateway, "registry_verify_failed_runs") == {frozenset(group): 0.0}
    assert samples(pushgateway, "registry_verify_image_broken_carried") == {image: 0.0}


def test_a_probe_that_starts_afresh_each_run_carries_its_state_through_the_pushgateway(
    registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher], pushgateway: Service,
    tmp_path: pathlib.Path,
) -> None:
    """A Kubernetes CronJob's container has an empty report directory every run."""
    reproduce_incident(registry_basic, make_pusher(registry_basic))
    group = {("job", "selfhosted_registry_probe"), ("registry", registry_basic.host)}
    image = frozenset(group | {("repository", "infra-ci"), ("tag", "latest")})
    for run_number, password in enumerate([registry_basic.readonly_password, "rotated", "rotated"]):
        probe = Probe(tmp_path / f"container-{run_number}", registry_basic.url)  # nothing left from the last run
        probe.set_credentials(registry_basic.readonly_username or "", password or "")
        run = probe.run("--pushgateway-url", pushgateway.url)
        assert run.returncode == (1 if run_number == 0 else 2) and not run.stderr, run.stdout + run.stderr
    assert samples(pushgateway, "registry_verify_failed_runs") == {frozenset(group): 2.0}
    assert samples(pushgateway, "registry_verify_image_broken") == {image: 1.0}
    assert samples(pushgateway, "registry_verify_image_broken_carried") == {image: 1.0}


def test_the_roles_probe_command_pushes_when_the_variable_is_set(
    registry: RegistryServer, pusher: ImagePusher, pushgateway: Service, tmp_path: pathlib.Path
) -> None:
    """The role's own template rendered by Ansible, then run as cron runs it."""
    pusher.push_image("team/app", "v1")
    probe = Probe(tmp_path / "probe", registry.url)
    command = tmp_path / "registry-probe"
    role = pathlib.Path(__file__).resolve().parents[2] / "roles" / "registry_probe"
    overrides = {
        "registry_probe_registry_url": registry.url, "registry_probe_pushgateway_url": pushgateway.url,
        "registry_probe_python": "/usr/bin/python3", "registry_probe_tools_dir": str(probe.tools_dir),
        "registry_probe_manifest_cache_dir": "", "registry_probe_lock_file": str(probe.lock_path),
        "registry_probe_report_path": str(probe.report_path), "registry_probe_metrics_path": str(probe.metrics_path),
    }
    playbook = [{
        "name": "Render the probe command", "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(role / "defaults" / "main.yml")],
        "tasks": [{"name": "Template", "ansible.builtin.template": {
            "src": str(role / "templates" / "registry-probe.sh.j2"), "dest": str(command), "mode": "0755"}}],
    }]
    path = tmp_path / "render.yml"
    path.write_text(json.dumps(playbook), encoding="utf-8")
    (tmp_path / "overrides.json").write_text(json.dumps(overrides), encoding="utf-8")
    rendered = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(path),
                               "-e", f"@{tmp_path / 'overrides.json'}"],
                              capture_output=True, text=True, timeout=300, check=False)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    run = subprocess.run([str(command)], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and "WARNING" not in run.stderr, run.stdout + run.stderr
    assert samples(pushgateway, "registry_verify_images") == {
        frozenset({("job", "selfhosted_registry_probe"), ("registry", registry.host)}): 1.0}

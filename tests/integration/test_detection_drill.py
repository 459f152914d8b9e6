# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The detection drill: the incident is noticed by the shipped probe and alerts, with real parts only.

The registry_probe role installs the probe and its cron entry (every minute here, the shortest cron
allows) and the rules file; Debian's cron runs it; Debian's node_exporter reads its textfile; Debian's
Prometheus scrapes node_exporter with the installed rules. The registry is broken by its real
`garbage-collect --delete-untagged`, and every verdict is read from Prometheus's own alerts API.

The waits are hang guards sized from the schedule (a probe interval, the rule's `for`, the scrape and
evaluation interval, and one more interval for a run that overlapped the change); the elapsed times are
printed for the record, never asserted tighter than that.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
import typing as t

import pytest
import yaml

from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.monitoring import Prometheus, Service, start_cron, start_node_exporter, start_prometheus
from tests.harness.registry import RegistryServer
from tests.integration.test_playbooks_support import run_playbook, write_inventory

INTERVAL = 60  # seconds: the probe runs every minute in the drill
RULE_FOR = 60  # RegistryManifestIntegrityFailure's `for`
SLACK = 30  # scrape + evaluation (2 s each) + the probe run's own duration
RULES = pathlib.Path(__file__).resolve().parents[2] / "roles/registry_probe/files/prometheus/selfhosted-registry.rules.yml"
RUNBOOK = "https://runbooks.example/registry/runbook.md"  # registry_probe_runbook_url: where this team reads it


def wait_until(what: str, condition: t.Callable[[], t.Any], deadline: float) -> float:
    """Poll until condition() is truthy; returns the seconds it took, fails naming what never happened."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"{what}: not seen within {deadline:.0f} s")
        time.sleep(1)
    return time.monotonic() - started


def install_probe_with_the_role(workdir: pathlib.Path, registry: RegistryServer, password: str) -> dict[str, t.Any]:
    probe_vars = {
        "registry_probe_registry_url": registry.url,
        "registry_probe_username": registry.readonly_username,
        "registry_probe_password": password,
        "registry_probe_interval_minutes": INTERVAL // 60,
        "registry_probe_manage_packages": False,
        "registry_probe_base_dir": str(workdir / "opt"),
        "registry_probe_report_dir": str(workdir / "reports"),
        "registry_probe_textfile_collector_dir": str(workdir / "textfile"),
        "registry_probe_log_dir": str(workdir / "log"),
        "registry_probe_manifest_cache_dir": str(workdir / "manifest-cache"),
        "registry_probe_lock_file": str(workdir / "probe.lock"),
        "registry_probe_cron_file": str(workdir / "cron.d" / "selfhosted-registry-probe"),
        "registry_probe_prometheus_rules_dir": str(workdir / "rules"),
        "registry_probe_runbook_url": RUNBOOK,
        # A Prometheus the host runs reloads when the rules file changed, and only then.
        "registry_probe_prometheus_reload_command": f"sh -c 'echo reloaded >> {workdir / 'reloads.log'}'",
    }
    (workdir / "cron.d").mkdir(parents=True, exist_ok=True)
    (workdir / "rules").mkdir(exist_ok=True)  # Prometheus's own rules directory: the role fills, never makes it
    playbook = workdir / "probe.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Install the integrity probe", "hosts": "registry_vm", "gather_facts": False,
        "roles": [{"role": "selfhosted.registry.registry_probe"}],
    }]))
    run = run_playbook(str(playbook), write_inventory(workdir / "inventory.yml"), probe_vars, workdir / "ansible")
    assert run.returncode == 0, run.explain()
    assert password not in run.output
    return probe_vars


def run_probe_by_hand(workdir: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """The probe command cron runs; when cron's own run holds the lock (exit 3), again once it is done."""
    while True:
        run = subprocess.run([str(workdir / "opt" / "bin" / "registry-probe")], capture_output=True, text=True,
                             timeout=300, check=False)
        if run.returncode != 3:
            return run
        time.sleep(2)


def alert_names(prometheus: Prometheus, state: str = "firing") -> set[str]:
    return {alert["labels"]["alertname"] for alert in prometheus.alerts(state=state)}


@pytest.mark.slow
def test_the_drill_detects_the_incident_its_repair_a_stopped_probe_and_an_unreadable_registry(
    tmp_path: pathlib.Path, registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    registry = registry_basic
    pusher = make_pusher(registry)
    pusher.push_image("team/app", "v1")
    install_probe_with_the_role(tmp_path, registry, registry.readonly_password or "")
    installed_rules = tmp_path / "rules" / RULES.name
    # The shipped file, with its runbook links pointed at this team's copy of the runbook.
    shipped = yaml.safe_load(RULES.read_text())
    for group in shipped["groups"]:
        for rule in group["rules"]:
            rule["annotations"]["runbook_url"] = f"{RUNBOOK}#{rule['alert'].lower()}"
    assert yaml.safe_load(installed_rules.read_text()) == shipped

    services: list[Service] = []
    try:
        services.append(node_exporter := start_node_exporter(tmp_path, tmp_path / "textfile"))
        services.append(prometheus := start_prometheus(tmp_path, f"127.0.0.1:{node_exporter.port}", [installed_rules]))
        services.append(cron := start_cron(tmp_path, tmp_path / "cron.d"))

        def probe_up() -> bool:
            return any(sample["value"][1] == "1" for sample in prometheus.query("registry_verify_up"))

        # The documented way to probe now, by hand: the same command cron runs.
        by_hand = run_probe_by_hand(tmp_path)
        assert by_hand.returncode == 0 and "SUMMARY verified=yes images=1 broken=0" in by_hand.stdout, by_hand.stdout
        first_run = wait_until("the first probe run seen by Prometheus", probe_up, SLACK)

        # 1. The incident, by the real garbage collector: the failure alert fires for the broken tag only.
        incident = reproduce_incident(registry, pusher)
        broken_at = time.monotonic()

        def failure_firing() -> list[dict[str, t.Any]]:
            return prometheus.alerts("RegistryManifestIntegrityFailure", "firing")

        detected = wait_until("RegistryManifestIntegrityFailure firing", failure_firing,
                              2 * INTERVAL + RULE_FOR + SLACK)
        firing = failure_firing()
        assert [(a["labels"]["repository"], a["labels"]["tag"]) for a in firing] == [("infra-ci", "latest")]
        assert firing[0]["labels"]["severity"] == "critical"
        assert f"{registry.host}/infra-ci:latest" in firing[0]["annotations"]["description"]
        assert firing[0]["annotations"]["runbook_url"] == f"{RUNBOOK}#registrymanifestintegrityfailure"
        assert "RegistryCatalogInaccessible" not in alert_names(prometheus)

        # 1b. No false all-clear: a run whose credentials are rejected proves nothing about the image, so
        #     it carries the broken series and the alert stays firing; then the right credentials again.
        install_probe_with_the_role(tmp_path, registry, "rotated-" + (registry.readonly_password or ""))
        assert run_probe_by_hand(tmp_path).returncode == 2

        def carried() -> bool:
            return [s["value"][1] for s in prometheus.query("registry_verify_image_broken_carried")] == ["1"] and \
                [s["value"][1] for s in prometheus.query("registry_verify_up")] == ["0"]

        wait_until("the rejected run's carried broken series seen by Prometheus", carried, SLACK)
        time.sleep(5)  # two more rule evaluations on the carried series
        assert [(a["labels"]["repository"], a["labels"]["tag"]) for a in failure_firing()] == [("infra-ci", "latest")]
        install_probe_with_the_role(tmp_path, registry, registry.readonly_password or "")

        # 2. The rebuild: the same image pushed again. The alert resolves by itself on the next run.
        rebuilt = pusher.push_index("infra-ci", "latest", platforms=("linux/amd64", "linux/arm64"),
                                    attestations=True, shared_layers=incident.keep_image.layers[:1])
        assert all(pusher.manifest_exists("infra-ci", child.digest) for child in rebuilt.children)
        resolved = wait_until("RegistryManifestIntegrityFailure resolved",
                              lambda: not prometheus.alerts("RegistryManifestIntegrityFailure"),
                              2 * INTERVAL + SLACK)

        # 3. The probe stops (its scheduler is gone): stale once no run has completed for 3 intervals.
        cron.stop()
        stale = wait_until("RegistryIntegrityProbeStale firing",
                           lambda: "RegistryIntegrityProbeStale" in alert_names(prometheus),
                           3 * INTERVAL + INTERVAL + SLACK)

        # 4. The probe runs again with credentials the registry rejects: two runs in a row fire the
        #    catalog alert, and no image is claimed broken.
        install_probe_with_the_role(tmp_path, registry, "rotated-" + (registry.readonly_password or ""))
        assert run_probe_by_hand(tmp_path).returncode == 2
        services.append(start_cron(tmp_path, tmp_path / "cron.d"))
        inaccessible = wait_until("RegistryCatalogInaccessible firing",
                                  lambda: "RegistryCatalogInaccessible" in alert_names(prometheus),
                                  3 * INTERVAL + SLACK)
        assert not prometheus.alerts("RegistryManifestIntegrityFailure")
        assert [sample["value"][1] for sample in prometheus.query("registry_verify_up")] == ["0"]
        log = (tmp_path / "log" / "probe.log").read_text()
        assert f"ERROR Registry {registry.host} rejected the credentials" in log
        assert (registry.readonly_password or "") not in log
        # The probe was installed four times; the rules changed once, so Prometheus was reloaded once.
        assert (tmp_path / "reloads.log").read_text().splitlines() == ["reloaded"]
        print(f"\ndrill: first run seen after {first_run:.0f} s; failure fired {detected:.0f} s after the GC"
              f" (bound {INTERVAL} s interval + {RULE_FOR} s for); resolved {resolved:.0f} s after the rebuild;"
              f" stale {stale:.0f} s after the probe stopped; inaccessible {inaccessible:.0f} s after the"
              f" credentials changed; {time.monotonic() - broken_at:.0f} s from the GC to the end")
    finally:
        for service in reversed(services):
            service.stop()

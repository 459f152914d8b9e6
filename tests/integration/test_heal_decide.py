# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The loop's guard rails (playbooks/heal_decide.yml), run by ansible-playbook with the event the rulebook
hands it: each case's decision, its log line, and the rebuild window's state on disk."""

from __future__ import annotations

import json
import pathlib
import time
import typing as t

import pytest

from tests.harness.registry import free_port
from tests.integration.test_playbooks_support import run_playbook, write_inventory

ALERT = {"fingerprints": ["fp-1"], "alertname": "RegistryManifestIntegrityFailure", "status": "firing"}


def diagnosed(broken: list[str], unverified: t.Sequence[str] = ()) -> dict[str, t.Any]:
    """What diagnose.yml posts: its verdicts and the alert behind it."""
    return {"registry_verdicts": {"ok": [], "broken": broken, "unverified": list(unverified), "not_found": []},
            "registry_images": broken, "heal_alert": ALERT}


def decide(tmp_path: pathlib.Path, event: dict[str, t.Any], **settings: t.Any) -> dict[str, t.Any]:
    """One run of the guard rails; returns the decision it logged (the last line of decisions.jsonl)."""
    state = tmp_path / "heal"
    extra = {"ansible_eda": {"event": event}, "heal_state_dir": str(state), **settings}
    run = run_playbook("heal_decide.yml", write_inventory(tmp_path / "inventory.yml"), extra,
                       tmp_path / f"run-{time.monotonic_ns()}")
    assert run.returncode == 0, run.explain()
    return json.loads((state / "decisions.jsonl").read_text().splitlines()[-1])


def test_a_confirmed_broken_image_is_rebuilt_once_per_window(tmp_path: pathlib.Path) -> None:
    first = decide(tmp_path, diagnosed(["infra-ci:latest"]), heal_auto_rebuild=True)
    assert (first["decision"], first["images"], first["fingerprints"]) == ("rebuild", ["infra-ci:latest"], ["fp-1"])
    assert set(json.loads((tmp_path / "heal" / "rebuilds.json").read_text())) == {"infra-ci:latest"}
    second = decide(tmp_path, diagnosed(["infra-ci:latest"]), heal_auto_rebuild=True)
    assert second["decision"] == "notify" and "already rebuilt by the loop within the last 21600 s" in second["reason"]


@pytest.mark.parametrize("event, settings, says", [
    (diagnosed(["infra-ci:latest"]), {}, "auto-rebuild is off (heal_auto_rebuild): would rebuild infra-ci:latest"),
    (diagnosed(["a:1", "b:1"]), {"heal_auto_rebuild": True, "heal_max_images": 1},
     "2 broken images, more than heal_max_images (1)"),
    (diagnosed([], unverified=["infra-ci:latest"]), {"heal_auto_rebuild": True},
     "the diagnosis confirmed no broken image"),
    ({"payload": {"status": "firing", "commonLabels": {"alertname": "RegistryCatalogInaccessible"}, "alerts": []}},
     {"heal_auto_rebuild": True}, "RegistryCatalogInaccessible never starts a rebuild"),
], ids=["opt-in", "cap", "unverified", "other-alert"])
def test_nothing_else_starts_a_rebuild(tmp_path: pathlib.Path, event: dict[str, t.Any], settings: dict[str, t.Any],
                                       says: str) -> None:
    decision = decide(tmp_path, event, **settings)
    assert decision["decision"] == "notify" and says in decision["reason"], decision
    assert not (tmp_path / "heal" / "rebuilds.json").exists()


def test_a_dry_run_says_what_it_would_rebuild_and_records_nothing(tmp_path: pathlib.Path) -> None:
    decision = decide(tmp_path, diagnosed(["infra-ci:latest"]), heal_auto_rebuild=True, heal_dry_run=True)
    assert decision["decision"] == "dry_run" and "would rebuild infra-ci:latest" in decision["reason"]
    assert not (tmp_path / "heal" / "rebuilds.json").exists()


@pytest.mark.parametrize("content", ["{not json", '["infra-ci:latest"]', '{"infra-ci:latest": "yesterday"}'])
def test_a_window_state_that_cannot_be_read_stops_every_rebuild(tmp_path: pathlib.Path, content: str) -> None:
    (tmp_path / "heal").mkdir()
    (tmp_path / "heal" / "rebuilds.json").write_text(content)
    decision = decide(tmp_path, diagnosed(["infra-ci:latest"]), heal_auto_rebuild=True)
    assert decision["decision"] == "notify" and "(the rebuild window) cannot be read" in decision["reason"], decision
    assert (tmp_path / "heal" / "rebuilds.json").read_text() == content  # left as it is, for a human


def test_a_resolved_alert_is_logged(tmp_path: pathlib.Path) -> None:
    labels = {"alertname": "RegistryManifestIntegrityFailure", "repository": "infra-ci", "tag": "latest"}
    event = {"payload": {"status": "resolved", "commonLabels": labels,
                         "alerts": [{"status": "resolved", "labels": labels, "fingerprint": "fp-9"}]}}
    decision = decide(tmp_path, event)
    assert (decision["decision"], decision["fingerprints"], decision["status"]) == ("resolved", ["fp-9"], "resolved")


def test_an_awx_job_keeps_the_window_on_the_state_host_or_rebuilds_nothing(tmp_path: pathlib.Path) -> None:
    # In an AWX job (awx_job_id set) local files end with the job: the window would never hold anything.
    (tmp_path / "local").mkdir()
    forgotten = decide(tmp_path / "local", diagnosed(["infra-ci:latest"]), heal_auto_rebuild=True, awx_job_id=42)
    assert forgotten["decision"] == "notify" and "forgotten when the job ends" in forgotten["reason"], forgotten
    assert not (tmp_path / "local" / "heal" / "rebuilds.json").exists()
    # On the inventory's registry VM (local here), the window is kept and a second firing finds it.
    first = decide(tmp_path, diagnosed(["infra-ci:latest"]), heal_auto_rebuild=True, awx_job_id=43,
                   heal_state_host="registry-vm")
    assert first["decision"] == "rebuild", first
    second = decide(tmp_path, diagnosed(["infra-ci:latest"]), heal_auto_rebuild=True, awx_job_id=44,
                    heal_state_host="registry-vm")
    assert second["decision"] == "notify" and "already rebuilt by the loop" in second["reason"], second


def test_the_state_is_read_and_written_on_the_state_host(tmp_path: pathlib.Path) -> None:
    """A state host that cannot be reached stops the run there: the state is never read from elsewhere."""
    inventory = write_inventory(tmp_path / "inventory.yml", registry_vm={
        "ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": free_port(),
        "ansible_ssh_common_args": "-o BatchMode=yes -o ConnectTimeout=5"})
    run = run_playbook("heal_decide.yml", inventory, {
        "ansible_eda": {"event": diagnosed(["infra-ci:latest"])}, "heal_state_dir": str(tmp_path / "heal"),
        "heal_auto_rebuild": True, "heal_state_host": "registry-vm"}, tmp_path / "run")
    assert run.returncode != 0
    assert "UNREACHABLE" in run.stdout and "registry-vm" in run.stdout, run.explain()
    assert not (tmp_path / "heal").exists()

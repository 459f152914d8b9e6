# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""registry_orphan_scan and registry_garbage_collect through ansible-playbook on a "registry host"
that has only the system Python, against storage the real registry wrote and the real GC broke."""

from __future__ import annotations

import json
import pathlib
import shutil

from tests.harness.images import ImagePusher
from tests.harness.incident import Incident
from tests.harness.registry import RegistryServer
from tests.integration.test_playbooks_support import run_registry_host_tasks

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def test_scan_finds_the_incident_and_the_guard_refuses_then_collects(
    registry: RegistryServer, pusher: ImagePusher, incident: Incident, tmp_path: pathlib.Path
) -> None:
    # Pushed after the incident's own GC: a tagged index whose untagged children --delete-untagged
    # would take, and a blob no manifest references (what a plain GC may take).
    guarded_index = pusher.push_index("guarded", "stable", attestations=False, seed="pb")
    stray = pusher.push_blob("guarded", b"uploaded layer, manifest never pushed")
    registry.stop()
    results = tmp_path / "results.json"
    common = {"storage_root": "{{ storage_root }}"}
    # The registry was stopped above, for the whole run.
    gc = dict(common, config_path="{{ config_path }}", gc_command=[REGISTRY_BINARY], registry_offline=True)
    tasks = [
        {"name": "Scan", "selfhosted.registry.registry_orphan_scan": dict(common, report_path="{{ report }}"),
         "register": "scan"},
        {"name": "Scan in check mode", "selfhosted.registry.registry_orphan_scan": common, "check_mode": True,
         "register": "scan_check"},
        {"name": "Guarded GC with --delete-untagged, check mode",
         "selfhosted.registry.registry_garbage_collect": dict(gc, delete_untagged=True),
         "check_mode": True, "register": "refused", "ignore_errors": True},
        {"name": "Plain guarded GC, check mode", "selfhosted.registry.registry_garbage_collect": gc,
         "check_mode": True, "register": "planned"},
        {"name": "Plain guarded GC", "selfhosted.registry.registry_garbage_collect": gc, "register": "collected"},
        {"name": "Plain guarded GC again", "selfhosted.registry.registry_garbage_collect": gc, "register": "again"},
        {"name": "Keep the results", "ansible.builtin.copy": {
            "content": "{{ {'scan': scan, 'scan_check': scan_check, 'refused': refused, 'planned': planned,"
                       " 'collected': collected, 'again': again} | to_json }}",
            "dest": str(results), "mode": "0600"}},
    ]
    completed = run_registry_host_tasks(
        tmp_path,
        tasks,
        {"storage_root": str(registry.storage_root), "config_path": str(registry.config_path),
         "report": str(tmp_path / "scan.json")},
        extra_args=["--diff"],
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    returned = json.loads(results.read_text(encoding="utf-8"))

    for scan in (returned["scan"], returned["scan_check"]):
        assert scan["changed"] is False and scan["clean"] is False
        orphans = [f for f in scan["findings"] if f["kind"] == "orphan_index"]
        assert len(orphans) == 1
        assert orphans[0]["digest"] == incident.index.digest
        assert sorted(orphans[0]["missing"]) == sorted(incident.missing_manifests)
        assert orphans[0]["tags"] == ["latest"]
        assert scan["broken_tags"] == ["infra-ci:latest"]
    assert json.loads((tmp_path / "scan.json").read_text())["broken_tags"] == ["infra-ci:latest"]

    refused = returned["refused"]
    assert refused["failed"] is True and refused["status"] == "refused" and refused["changed"] is False
    assert {b["digest"] for b in refused["blockers"] if b["kind"] == "manifest"} == {
        child.digest for child in guarded_index.children
    }
    assert "reachable from guarded:stable" in refused["msg"]

    planned, collected, again = returned["planned"], returned["collected"], returned["again"]
    assert planned["status"] == "would_collect" and planned["changed"] is False
    assert stray in planned["eligible_blobs"]
    assert collected["status"] == "collected" and collected["changed"] is True
    assert stray in collected["deleted_blobs"]
    assert f"-blob {stray}" in completed.stdout  # the diff as Ansible prints it
    assert again["changed"] is False and again["status"] == "nothing_to_collect"
    # The collection and the results file are the only changes.
    assert "changed=2 " in completed.stdout
    assert collected["scan_after"]["new_damage"] == [] and collected["scan_after"]["other_damage"] == 1

    registry.start()
    for child in guarded_index.children:
        assert pusher.manifest_exists("guarded", child.digest)

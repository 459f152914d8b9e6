# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""diagnose.yml, verify.yml and investigate.yml run with ansible-playbook against the real registry,
on the incident reproduced by the real garbage collector and on healthy images. The "registry VM" is
this machine, through the local connection or through a real sshd.
"""

from __future__ import annotations

import json
import pathlib

from tests.harness.images import ImagePusher
from tests.harness.incident import Incident, reproduce_incident
from tests.harness.registry import RegistryServer
from tests.harness.sshd import SshServer
from tests.integration.test_playbooks_support import (
    run_local_playbook,
    run_playbook,
    storage_snapshot,
    write_inventory,
)

HEALTHY = ("team/app:v1", "team/app:v2", "base/python:3.12", "tools/jq:1.7")


def _push_healthy(pusher: ImagePusher) -> None:
    """Pushed after the incident's GC, so they stay whole: indexes, a manifest list and a single image."""
    pusher.push_index("team/app", "v1", seed="app-v1")
    pusher.push_index("team/app", "v2", fmt="docker", seed="app-v2")
    pusher.push_index("base/python", "3.12", seed="python")
    pusher.push_image("tools/jq", "1.7", seed="jq")


def _vars(registry: RegistryServer, **more: object) -> dict[str, object]:
    values: dict[str, object] = {"registry_url": registry.url, "registry_storage_root": str(registry.storage_root)}
    values.update(more)
    return values


def custom_stats(run) -> dict:
    """What set_stats handed on (ANSIBLE_SHOW_CUSTOM_STATS prints it as one JSON line after the recap)."""
    tail = run.stdout[run.stdout.index("CUSTOM STATS"):]
    return json.loads(tail[tail.index("RUN:") + 4:].splitlines()[0])


def _assert_names_missing_children(stdout: str, incident: Incident) -> None:
    for digest in incident.missing_manifests:
        assert digest in stdout, f"missing child {digest} not named"


# ---- diagnose --------------------------------------------------------------------------------------


def test_diagnose_fails_on_the_incident_and_names_the_missing_children(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    run = run_local_playbook("diagnose.yml", tmp_path, _vars(registry, registry_images="infra-ci:latest"),
                             env={"ANSIBLE_SHOW_CUSTOM_STATS": "true"})

    assert run.returncode != 0, run.explain()
    assert ("infra-ci:latest is BROKEN (the GC incident: its index resolves, child manifests are gone):"
            " the tag resolves to " + incident.index.digest) in run.stdout, run.explain()
    _assert_names_missing_children(run.stdout, incident)
    amd64 = next(child for child in incident.index.children if child.platform == "linux/amd64")
    assert f"linux/amd64 image {amd64.digest}" in run.stdout, run.explain()
    assert "unknown/unknown attestation sha256:" in run.stdout
    # The broken images go to the next job of an AWX workflow.
    stats = run.stdout[run.stdout.index("CUSTOM STATS"):]
    assert '"registry_images": [' in stats and '"infra-ci:latest"' in stats, run.explain()
    assert "1 of 1 image(s) broken: infra-ci:latest" in run.stdout
    assert "verdicts: ok 0, broken 1, unverified 0, not_found 0" in run.stdout, run.explain()
    assert "GC incident pattern (tagged index whose child manifests are gone): YES" in run.stdout, run.explain()
    assert f"{len(incident.missing_manifests)} child manifest(s) missing over the API" in run.stdout
    assert "1 orphan index(es) in storage" in run.stdout, run.explain()
    assert "-e registry_images=infra-ci:latest" in run.stdout
    assert "1 image(s) cannot be pulled: infra-ci:latest." in run.stdout
    assert run.recap("localhost")["failed"] == 1 and run.recap("registry-vm")["failed"] == 0


def test_diagnose_passes_on_healthy_images(tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher) -> None:
    _push_healthy(pusher)

    run = run_local_playbook("diagnose.yml", tmp_path,
                             _vars(registry, registry_images=" team/app:v1,\nbase/python:3.12 "))

    assert run.returncode == 0, run.explain()
    assert "0 of 2 image(s) broken: none" in run.stdout, run.explain()
    assert "GC incident pattern (tagged index whose child manifests are gone): no" in run.stdout
    assert "0 finding(s) on registry-vm, 0 harmful" in run.stdout, run.explain()
    assert "nothing to rebuild" in run.stdout


def test_diagnose_in_check_mode_gives_the_same_diagnosis(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    before = storage_snapshot(registry.storage_root)

    run = run_local_playbook("diagnose.yml", tmp_path, _vars(registry, registry_images=["infra-ci:latest"]), check=True)

    assert run.returncode != 0, run.explain()
    _assert_names_missing_children(run.stdout, incident)
    assert "GC incident pattern (tagged index whose child manifests are gone): YES" in run.stdout, run.explain()
    assert storage_snapshot(registry.storage_root) == before


def test_diagnose_over_ssh_with_credentials_that_never_show(
    tmp_path: pathlib.Path, registry_basic: RegistryServer, make_pusher, sshd_server: SshServer
) -> None:
    pusher = make_pusher(registry_basic)
    incident = reproduce_incident(registry_basic, pusher)
    inventory = write_inventory(tmp_path / "inventory.yml", registry_vm=sshd_server.inventory_vars())
    extra = _vars(
        registry_basic,
        registry_images=f"{registry_basic.host}/infra-ci:latest",  # as a failing pipeline's log shows it
        registry_username=registry_basic.readonly_username,
        registry_password=registry_basic.readonly_password,
    )

    run = run_playbook("diagnose.yml", inventory, extra, tmp_path / "run")

    assert run.returncode != 0, run.explain()
    _assert_names_missing_children(run.stdout, incident)
    assert "1 orphan index(es) in storage" in run.stdout, run.explain()
    assert "Accepted publickey for root" in sshd_server.log()
    assert registry_basic.readonly_password not in run.output


def test_diagnose_without_the_registry_host_still_diagnoses_over_the_api(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    inventory = write_inventory(tmp_path / "inventory.yml", group="somewhere_else")

    run = run_playbook("diagnose.yml", inventory, _vars(registry, registry_images="infra-ci:latest"), tmp_path / "run")

    assert run.returncode != 0, run.explain()
    _assert_names_missing_children(run.stdout, incident)
    assert "GC incident pattern (tagged index whose child manifests are gone): YES" in run.stdout
    assert "storage scan: not run (diagnose_scan_storage is false, or no host in registry_vm)" in run.stdout, run.explain()


def test_diagnose_with_the_storage_scan_turned_off(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    run = run_local_playbook("diagnose.yml", tmp_path,
                             _vars(registry, registry_images="infra-ci:latest", diagnose_scan_storage=False))

    assert run.returncode != 0, run.explain()
    _assert_names_missing_children(run.stdout, incident)
    assert "0 orphan index(es) in storage" in run.stdout, run.explain()
    assert "storage scan: not run (diagnose_scan_storage is false" in run.stdout, run.explain()


def test_diagnose_reports_a_wrong_storage_root_in_one_line_and_keeps_the_api_diagnosis(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    extra = _vars(registry, registry_images="infra-ci:latest", registry_storage_root=str(tmp_path / "nowhere"))

    run = run_local_playbook("diagnose.yml", tmp_path, extra)

    assert run.returncode != 0
    _assert_names_missing_children(run.stdout, incident)
    assert f"storage root {tmp_path / 'nowhere'} does not exist" in run.stdout, run.explain()
    assert "Traceback" not in run.output


def test_diagnose_names_rejected_credentials_in_one_line(tmp_path: pathlib.Path, registry_basic: RegistryServer) -> None:
    wrong = "not-the-password-" + registry_basic.host
    extra = _vars(registry_basic, registry_images="infra-ci:latest", registry_username=registry_basic.username,
                  registry_password=wrong)

    run = run_local_playbook("diagnose.yml", tmp_path, extra, env={"ANSIBLE_SHOW_CUSTOM_STATS": "true"})

    assert run.returncode != 0
    assert "rejected the credentials" in run.stdout, run.explain()
    _assert_unverified_and_nothing_passed_on(run, "infra-ci:latest")
    assert wrong not in run.output
    assert "Traceback" not in run.output


def _assert_unverified_and_nothing_passed_on(run, reference: str) -> None:
    """Not reached is never broken: the image is unverified, and no image goes on to a rebuild."""
    assert "verdicts: ok 0, broken 0, unverified 1, not_found 0" in run.stdout, run.explain()
    assert "Could not verify (fix the registry, the network or the credentials; nothing was rebuilt): " + reference \
        in run.stdout, run.explain()
    stats = custom_stats(run)
    assert stats["registry_images"] == [] and stats["registry_verdicts"]["unverified"] == [reference], run.explain()


def test_diagnose_names_an_unreachable_registry_in_one_line(tmp_path: pathlib.Path) -> None:
    from tests.harness.registry import free_port

    url = f"http://127.0.0.1:{free_port()}"

    run = run_local_playbook("diagnose.yml", tmp_path, {"registry_url": url, "registry_images": "infra-ci:latest"},
                             env={"ANSIBLE_SHOW_CUSTOM_STATS": "true"})

    assert run.returncode != 0
    assert "Could not reach" in run.stdout, run.explain()
    _assert_unverified_and_nothing_passed_on(run, "infra-ci:latest")
    assert "Traceback" not in run.output


def test_diagnose_calls_a_mistyped_tag_not_found_and_in_the_workflow_fails_without_passing_it_on(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher
) -> None:
    _push_healthy(pusher)

    run = run_local_playbook("diagnose.yml", tmp_path,
                             _vars(registry, registry_images="team/app:v1 team/app:v9", runbook_workflow=True),
                             env={"ANSIBLE_SHOW_CUSTOM_STATS": "true"})

    assert run.returncode != 0, run.explain()
    assert "verdicts: ok 1, broken 0, unverified 0, not_found 1" in run.stdout, run.explain()
    assert "Not in the registry (check the names): team/app:v9." in run.stdout, run.explain()
    stats = custom_stats(run)
    assert stats["registry_images"] == [] and stats["registry_verdicts"]["not_found"] == ["team/app:v9"]


def test_diagnose_in_the_workflow_succeeds_only_to_hand_broken_images_on(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    run = run_local_playbook("diagnose.yml", tmp_path,
                             _vars(registry, registry_images="infra-ci:latest", runbook_workflow=True))

    assert run.returncode == 0, run.explain()  # the workflow's success path is the rebuild
    assert "1 of 1 image(s) broken: infra-ci:latest" in run.stdout, run.explain()


def test_diagnose_asks_for_its_inputs(tmp_path: pathlib.Path) -> None:
    run = run_local_playbook("diagnose.yml", tmp_path, {})

    assert run.returncode != 0
    assert "Set registry_url" in run.stdout and "registry_images" in run.stdout, run.explain()


# ---- verify ----------------------------------------------------------------------------------------


def test_verify_catalog_finds_the_broken_tag_among_healthy_ones_and_writes_report_and_metrics(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, incident: Incident
) -> None:
    _push_healthy(pusher)
    report, metrics = tmp_path / "out" / "verify.json", tmp_path / "out" / "registry_verify.prom"
    report.parent.mkdir()

    run = run_local_playbook(
        "verify.yml", tmp_path,
        _vars(registry, verify_catalog=True, verify_report_path=str(report), verify_metrics_path=str(metrics)),
    )

    assert run.returncode != 0, run.explain()
    # infra-ci:latest and its intact keep image, plus the healthy ones.
    assert f"{len(HEALTHY) + 2} image(s) checked, 1 broken" in run.stdout, run.explain()
    assert f"infra-ci:latest: child manifest {incident.missing_manifests[0]}" in run.stdout or any(
        f"infra-ci:latest: child manifest {d}" in run.stdout for d in incident.missing_manifests
    ), run.explain()
    assert "1 image(s) broken: infra-ci:latest: child manifest sha256:" in run.stdout, run.explain()
    document = json.loads(report.read_text(encoding="utf-8"))
    broken = {entry["reference"] for entry in document["broken"]}
    assert broken == {"infra-ci:latest"}
    assert {image["reference"] for image in document["images"] if image["ok"]} >= set(HEALTHY)
    assert "registry_verify" in metrics.read_text(encoding="utf-8")


def test_verify_list_passes_on_healthy_images(tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher) -> None:
    _push_healthy(pusher)

    run = run_local_playbook("verify.yml", tmp_path,
                             _vars(registry, registry_images=list(HEALTHY), registry_blob_check="read"))

    assert run.returncode == 0, run.explain()
    assert f"{len(HEALTHY)} image(s) checked, 0 broken" in run.stdout, run.explain()
    assert "blob check read" in run.stdout
    # No probe at the registry_vm role's path on this "VM": the run says so, and still passes.
    assert "the probe could not run on registry-vm (/opt/selfhosted-registry/probe/bin/registry-probe is not " \
           "installed there): run it by hand" in run.stdout, run.explain()


def test_verify_ends_by_running_the_probe_on_the_registry_host_so_the_alert_clears(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident, pusher: ImagePusher
) -> None:
    from tests.harness.probe import Probe

    probe = Probe(tmp_path / "probe", registry.url)
    before = probe.run()
    assert before.returncode == 1 and 'registry_verify_image_broken{' in (before.metrics or "")
    command = probe.write_command(tmp_path / "registry-probe")  # what the role installs, as cron runs it
    pusher.push_index("infra-ci", "latest", platforms=("linux/amd64", "linux/arm64"), attestations=True,
                      shared_layers=incident.keep_image.layers[:1])  # the rebuild

    extra = _vars(registry, registry_images="infra-ci:latest", registry_blob_check="read",
                  verify_probe_command=str(command))
    run = run_local_playbook("verify.yml", tmp_path, extra)

    assert run.returncode == 0, run.explain()
    assert "probe on registry-vm: SUMMARY verified=yes images=" in run.stdout, run.explain()
    assert "so the failure alert clears at the next scrape" in run.stdout
    metrics = probe.metrics_path.read_text()
    assert "registry_verify_image_broken{" not in metrics and 'registry_verify_broken_images{' in metrics


def test_verify_from_the_installed_collection_limits_the_catalog_and_only_reports(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, incident: Incident
) -> None:
    _push_healthy(pusher)

    only_team = run_local_playbook("selfhosted.registry.verify", tmp_path,
                                   _vars(registry, verify_catalog=True, verify_repositories=["team/*"]), "run1")
    whole = run_local_playbook("selfhosted.registry.verify", tmp_path,
                               _vars(registry, verify_catalog="true", verify_fail_when_broken=False), "run2")

    assert only_team.returncode == 0, only_team.explain()
    assert "2 image(s) checked, 0 broken" in only_team.stdout, only_team.explain()
    assert whole.returncode == 0, whole.explain()
    assert f"{len(HEALTHY) + 2} image(s) checked, 1 broken" in whole.stdout, whole.explain()


def test_verify_limits_platforms_and_treats_a_mirror_as_informational(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    amd64 = next(child for child in incident.index.children if child.platform == "linux/amd64")
    arm64 = next(child for child in incident.index.children if child.platform == "linux/arm64")

    only_amd64 = run_local_playbook("verify.yml", tmp_path,
                                    _vars(registry, registry_images="infra-ci:latest", verify_platforms=["linux/amd64"]),
                                    "run1")
    mirror = run_local_playbook("verify.yml", tmp_path,
                                _vars(registry, registry_images="infra-ci:latest", registry_is_mirror=True), "run2")

    assert only_amd64.returncode != 0, only_amd64.explain()
    assert amd64.digest in only_amd64.stdout and arm64.digest not in only_amd64.stdout, only_amd64.explain()
    assert mirror.returncode == 0, mirror.explain()
    assert "1 image(s) checked, 1 broken" in mirror.stdout, mirror.explain()


def test_verify_refuses_a_list_and_the_catalog_together(tmp_path: pathlib.Path, registry: RegistryServer) -> None:
    run = run_local_playbook("verify.yml", tmp_path, _vars(registry, registry_images="a:1", verify_catalog=True))

    assert run.returncode != 0
    assert "either registry_images" in run.stdout and "not both" in run.stdout, run.explain()


# ---- investigate -----------------------------------------------------------------------------------


def test_investigate_lists_every_broken_tag_with_its_pipeline_and_deletes_nothing(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, incident: Incident
) -> None:
    reproduce_incident(registry, pusher, repository="team/builder", tag="stable", seed="builder",
                       variant="tag_dirs_removed")
    _push_healthy(pusher)
    before = storage_snapshot(registry.storage_root)
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    extra = _vars(
        registry,
        investigate_report_dir=str(report_dir),
        rebuild_pipelines={"infra-ci": {"repo": "ops/infra-ci", "branch": "main"}},
    )

    run = run_local_playbook("investigate.yml", tmp_path, extra)

    assert run.returncode != 0, run.explain()
    assert "infra-ci:latest -> rerun ops/infra-ci@main" in run.stdout, run.explain()
    assert "team/builder:stable -> rerun no pipeline mapped: use rebuild_on_host.yml" in run.stdout, run.explain()
    assert "pipelines to rerun: ops/infra-ci@main" in run.stdout
    assert "2 tag(s) cannot be pulled: infra-ci:latest, team/builder:stable." in run.stdout
    for healthy in HEALTHY:
        assert f"{healthy} -> rerun" not in run.stdout
    assert "nothing was deleted or changed" in run.stdout
    assert storage_snapshot(registry.storage_root) == before
    scan = json.loads((report_dir / "storage-scan.json").read_text(encoding="utf-8"))
    assert scan["findings"], scan
    assert json.loads((report_dir / "verify.json").read_text(encoding="utf-8"))["broken"]


def test_investigate_on_a_healthy_registry_passes(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher
) -> None:
    _push_healthy(pusher)
    # No registry_storage_root: the default follows the registry_vm role's variables in the inventory.
    role_layout = {"registry_vm_data_dir": str(registry.storage_root.parent),
                   "registry_vm_private_name": registry.storage_root.name}
    inventory = write_inventory(tmp_path / "inventory.yml", registry_vm={"ansible_connection": "local", **role_layout})
    extra = {"registry_url": registry.url}

    run = run_playbook("investigate.yml", inventory, extra, tmp_path / "run")
    checked = run_playbook("investigate.yml", inventory, extra, tmp_path / "check", check=True)

    assert run.returncode == 0, run.explain()
    assert f"0 of {len(HEALTHY)} tag(s) broken" in run.stdout, run.explain()
    assert "storage: 0 finding(s) on registry-vm, 0 harmful" in run.stdout, run.explain()
    assert checked.returncode == 0, checked.explain()
    assert f"0 of {len(HEALTHY)} tag(s) broken" in checked.stdout, checked.explain()


# ---- an on-call engineer's night: the VM down, a rebuilt image, a wrong name -------------------------------


def test_diagnose_and_investigate_keep_the_api_verdict_when_the_registry_vm_is_unreachable(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident, sshd_server: SshServer
) -> None:
    inventory = write_inventory(tmp_path / "inventory.yml", registry_vm=sshd_server.inventory_vars())
    sshd_server.stop()  # the VM is down, or SSH to it is

    diagnose = run_playbook("diagnose.yml", inventory, _vars(registry, registry_images="infra-ci:latest"),
                            tmp_path / "diagnose")
    investigate = run_playbook("investigate.yml", inventory, _vars(registry), tmp_path / "investigate")

    assert diagnose.returncode != 0, diagnose.explain()
    _assert_names_missing_children(diagnose.stdout, incident)
    assert "GC incident pattern (tagged index whose child manifests are gone): YES" in diagnose.stdout, diagnose.explain()
    assert "storage scan: registry-vm: the storage scan could not run because the host cannot be reached over SSH (" \
        in diagnose.stdout, diagnose.explain()
    assert "-e diagnose_scan_storage=false skips the scan" in diagnose.stdout
    assert "1 image(s) cannot be pulled: infra-ci:latest." in diagnose.stdout
    assert investigate.returncode != 0, investigate.explain()
    assert "storage: registry-vm: the storage scan could not run because the host cannot be reached over SSH (" \
        in investigate.stdout, investigate.explain()
    assert "-e investigate_scan_storage=false skips the scan" in investigate.stdout
    assert "1 tag(s) cannot be pulled: infra-ci:latest." in investigate.stdout, investigate.explain()
    for run in (diagnose, investigate):
        assert "Traceback" not in run.output


def test_after_a_rebuild_the_old_index_is_stale_not_the_incident(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, incident: Incident
) -> None:
    from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import scan_metrics, scan_storage

    before = {m.name: m.value for m in scan_metrics(scan_storage(str(registry.storage_root))) if not m.labels}
    rebuilt = pusher.push_index("infra-ci", "latest", seed="rebuilt after the incident")  # what CI pushes
    assert rebuilt.digest != incident.index.digest

    diagnose = run_local_playbook("diagnose.yml", tmp_path, _vars(registry, registry_images="infra-ci:latest"),
                                  "diagnose")
    investigate = run_local_playbook("investigate.yml", tmp_path, _vars(registry), "investigate")
    after = {m.name: m.value for m in scan_metrics(scan_storage(str(registry.storage_root))) if not m.labels}

    assert diagnose.returncode == 0, diagnose.explain()
    assert "0 of 1 image(s) broken: none" in diagnose.stdout, diagnose.explain()
    assert "GC incident pattern (tagged index whose child manifests are gone): no" in diagnose.stdout, diagnose.explain()
    assert "0 harmful, 1 stale (no tag reaches them: harmless to pulls)" in diagnose.stdout, diagnose.explain()
    assert "nothing to rebuild" in diagnose.stdout
    assert investigate.returncode == 0, investigate.explain()
    assert f"stale, no tag reaches it: infra-ci@{incident.index.digest}: index child manifests missing" \
        in investigate.stdout, investigate.explain()
    # The metric an alert can use clears with the rebuild; the stale index stays until a guarded GC.
    assert before["registry_storage_broken_tags"] == 1 and after["registry_storage_broken_tags"] == 0


def test_diagnose_on_a_tag_that_does_not_exist_says_so_and_advises_no_rebuild(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher
) -> None:
    _push_healthy(pusher)

    run = run_local_playbook("diagnose.yml", tmp_path, _vars(registry, registry_images="team/app:v9"))

    assert run.returncode != 0, run.explain()
    assert "not_found (the tag answers 404 and storage has no link for it: check the name): team/app:v9" \
        in run.stdout, run.explain()
    assert "Not in the registry (check the names): team/app:v9." in run.stdout
    assert "rebuild_ci" not in run.stdout and "nothing to rebuild" in run.stdout, run.explain()
    assert "GC incident pattern (tagged index whose child manifests are gone): no" in run.stdout


def test_the_readme_install_works_offline_and_a_checkout_runs_its_playbooks(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher
) -> None:
    """playbooks/README.md: build, install offline with community.docker already there, run from the checkout."""
    import shutil
    import subprocess

    from tests.integration.test_playbooks_support import COLLECTIONS, REPO_ROOT, VENV_BIN, ansible_env

    _push_healthy(pusher)
    collections = tmp_path / "home" / ".ansible" / "collections"
    shutil.copytree(COLLECTIONS / "ansible_collections" / "community" / "docker",
                    collections / "ansible_collections" / "community" / "docker")
    env = ansible_env(tmp_path, {"HOME": str(tmp_path / "home"), "ANSIBLE_COLLECTIONS_PATH": str(collections)})
    galaxy = str(VENV_BIN / "ansible-galaxy")
    built = subprocess.run([galaxy, "collection", "build", "--output-path", str(tmp_path), "."], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    archive = next(tmp_path.glob("selfhosted-registry-*.tar.gz"))
    installed = subprocess.run([galaxy, "collection", "install", "--offline", "--no-deps", str(archive),
                                "-p", str(collections)], env=env, capture_output=True, text=True, timeout=300,
                               check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    run = run_local_playbook("verify.yml", tmp_path, _vars(registry, registry_images=list(HEALTHY)),
                             env={"HOME": str(tmp_path / "home"), "ANSIBLE_COLLECTIONS_PATH": str(collections)})

    assert run.returncode == 0, run.explain()
    assert f"{len(HEALTHY)} image(s) checked, 0 broken" in run.stdout, run.explain()

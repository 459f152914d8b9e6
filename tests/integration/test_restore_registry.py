# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore on the real registry broken by the real `garbage-collect --delete-untagged`.

A backup of the storage is made with `cp -a` before the collection, a second real registry holds copies of
some images, and every assertion reads the restored registry over its own API: the same index digest as
before the incident, every child, config and layer answering with its bytes.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess

from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import RegistryClient
from ansible_collections.selfhosted.registry.plugins.module_utils._restore import RestoreOptions, run_restore
from ansible_collections.selfhosted.registry.plugins.module_utils._restore_sources import RegistrySource, StorageSource
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import scan_storage
from tests.harness.images import PushedIndex


def _tree_state(root: pathlib.Path) -> dict[str, str]:
    """Every file and directory under root with the hash of its content: what "nothing changed" compares."""
    state = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            state[os.path.relpath(path, root)] = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    return state


def _backup(registry) -> pathlib.Path:
    target = registry.workdir / "backup"
    if target.exists():
        shutil.rmtree(target)
    subprocess.run(["cp", "-a", str(registry.storage_root), str(target)], check=True)
    return target


def _gc_delete_untagged(registry) -> None:
    registry.stop()
    result = registry.garbage_collect(delete_untagged=True)
    registry.start()
    assert result.returncode == 0, result.stdout + result.stderr


def _served_digest(pusher, repository: str, tag: str) -> str:
    response = pusher.get_manifest(repository, tag)
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


def _fully_served(pusher, index: PushedIndex) -> list[str]:
    """What the registry fails to serve of the index: children, configs, layers (reading each blob)."""
    failing = []
    for child in index.children:
        if pusher.get_manifest(index.repository, child.digest).status_code != 200:
            failing.append(f"manifest {child.digest}")
        for digest in child.blob_digests:
            response = pusher.repo_request("GET", index.repository, f"blobs/{digest}")
            if response.status_code != 200 or hashlib.sha256(response.content).hexdigest() != digest[7:]:
                failing.append(f"blob {digest} ({response.status_code})")
    return failing


def _restore(registry, images, sources, **options):
    registry.stop()  # the restore places files only while the registry is stopped or read-only
    try:
        return run_restore(RestoreOptions(str(registry.storage_root), tuple(images), registry_offline=True, **options),
                           sources)
    finally:
        registry.start()


def test_restore_from_a_backup_brings_the_image_back_with_its_digests(registry, pusher):
    keep = pusher.push_image("infra-ci", "latest-base", seed="keep")
    index = pusher.push_index("infra-ci", "latest", attestations=True, shared_layers=keep.layers[:1], seed="r1")
    backup = _backup(registry)
    _gc_delete_untagged(registry)
    assert _served_digest(pusher, "infra-ci", "latest") == index.digest
    broken = _fully_served(pusher, index)
    assert len(broken) >= len(index.children), broken  # the incident: every child 404

    before = _tree_state(registry.storage_root)
    plan = run_restore(RestoreOptions(str(registry.storage_root), ("infra-ci:latest",), check_mode=True),
                       [StorageSource(str(backup))])
    assert _tree_state(registry.storage_root) == before, "check mode changed the storage"
    assert plan.commands == [] and plan.changed  # in check mode: would change
    assert [image.status for image in plan.images] == ["would_restore"], plan.lines()
    assert plan.summary()["would_link"] == len(index.children)  # the children's bytes survive the GC
    assert plan.summary()["would_restore"] >= 1 and plan.summary()["bytes"] > 0

    outcome = _restore(registry, ["infra-ci:latest"], [StorageSource(str(backup))])
    assert not outcome.failed, outcome.failed
    assert [image.status for image in outcome.images] == ["restored"], outcome.lines()
    assert outcome.images[0].digest == index.digest
    assert {item.action for item in outcome.objects} == {"restored", "linked"}
    assert all(item.source == f"backup {backup}" for item in outcome.objects if item.action == "restored")
    assert _served_digest(pusher, "infra-ci", "latest") == index.digest
    assert _fully_served(pusher, index) == []
    scan = scan_storage(str(registry.storage_root))
    assert [finding.log_line() for finding in scan.findings if finding.harmful] == []

    again = _restore(registry, ["infra-ci:latest"], [StorageSource(str(backup))])
    assert not again.changed and [image.status for image in again.images] == ["complete"]


def test_sources_in_order_refuse_a_corrupt_backup_and_list_what_none_has(
    registry, pusher, make_registry, make_pusher
):
    replica = make_registry("anonymous")
    replica_pusher = make_pusher(replica)
    old = pusher.push_index("infra-ci", "latest", attestations=False, seed="old")
    assert replica_pusher.push_index("infra-ci", "latest", attestations=False, seed="old").digest == old.digest
    backup = _backup(registry)  # taken before the next two images existed
    newer = pusher.push_index("team/app", "2.1", attestations=False, seed="newer")
    assert replica_pusher.push_index("team/app", "2.1", attestations=False, seed="newer").digest == newer.digest
    lost = pusher.push_index("tools", "1", attestations=False, seed="lost")
    _gc_delete_untagged(registry)

    # A layer of the old image is altered in the backup: it must be refused and taken from the replica.
    altered = old.children[0].layer_digests[-1]
    altered_path = backup / "docker/registry/v2/blobs/sha256" / altered[7:9] / altered[7:] / "data"
    altered_path.write_bytes(altered_path.read_bytes()[:-7] + b"altered")

    replica_client = RegistryClient(replica.url, verify=False)
    sources = [StorageSource(str(backup)), RegistrySource(replica_client)]
    try:
        plan = run_restore(RestoreOptions(str(registry.storage_root), ("infra-ci:latest", "team/app:2.1", "tools:1"),
                                          check_mode=True), sources)
        outcome = _restore(registry, ["infra-ci:latest", "team/app:2.1", "tools:1"], sources)
    finally:
        replica_client.close()

    statuses = {image.reference: image.status for image in outcome.images}
    assert statuses == {"infra-ci:latest": "restored", "team/app:2.1": "restored", "tools:1": "rebuild"}, outcome.lines()
    assert {image.reference: image.status for image in plan.images} == {
        "infra-ci:latest": "would_restore", "team/app:2.1": "would_restore", "tools:1": "rebuild"}
    assert outcome.rebuild == ["tools:1"]
    by_digest = {(item.repository, item.digest): item for item in outcome.objects}
    refused = by_digest[("infra-ci", altered)]
    assert refused.source == f"registry {replica.url}" and refused.action == "restored"
    assert any("hash to" in problem and "not used" in problem for problem in refused.problems), refused.problems
    assert all(item.source == f"registry {replica.url}" for item in outcome.objects
               if item.repository == "team/app" and item.action == "restored")
    unavailable = [item for item in outcome.objects if item.repository == "tools" and item.action == "unavailable"]
    assert unavailable and all(any("has no blob" in p for p in item.problems) for item in unavailable)
    # Each manifest of the lost image waits for its blobs: none is linked without them.
    assert all(item.action == "not_placed" for item in outcome.objects
               if item.repository == "tools" and item.kind == "manifest")

    assert _fully_served(pusher, old) == [] and _fully_served(pusher, newer) == []
    assert _served_digest(pusher, "infra-ci", "latest") == old.digest
    assert _served_digest(pusher, "team/app", "2.1") == newer.digest
    assert _fully_served(pusher, lost) != []
    # The altered backup file was never copied in: the registry's copy hashes right.
    placed = registry.blob_data_path(altered).read_bytes()
    assert hashlib.sha256(placed).hexdigest() == altered[7:]
    scan = scan_storage(str(registry.storage_root))
    assert set(scan.broken_tags) == {"tools:1"}


def test_restore_playbook_dry_runs_by_default_then_restores_verifies_and_runs_the_probe(registry, pusher, tmp_path):
    from tests.harness.probe import Probe
    from tests.integration.test_playbooks import custom_stats
    from tests.integration.test_playbooks_support import run_local_playbook, storage_snapshot

    keep = pusher.push_image("infra-ci", "latest-base", seed="keep")
    index = pusher.push_index("infra-ci", "latest", attestations=True, shared_layers=keep.layers[:1], seed="pb")
    backup = _backup(registry)
    lost = pusher.push_index("tools", "1", attestations=False, seed="lost")  # pushed after the backup
    _gc_delete_untagged(registry)
    probe = Probe(tmp_path / "probe", registry.url)
    assert probe.run().returncode == 1
    pid = str(registry.pid)
    extra = {
        "registry_url": registry.url,
        "registry_storage_root": str(registry.storage_root),
        "registry_images": f"{registry.host}/infra-ci:latest, tools:1",
        "restore_sources": [{"path": str(backup)}],
        # A paused registry answers nothing and writes nothing while the files are placed.
        "restore_before_command": ["kill", "-STOP", pid],
        "restore_after_command": ["kill", "-CONT", pid],
        "verify_probe_command": str(probe.write_command(tmp_path / "registry-probe")),
    }
    before = storage_snapshot(registry.storage_root)
    dry = run_local_playbook("restore.yml", tmp_path, extra, workdir="dry", extra_args=["--diff"],
                             env={"ANSIBLE_SHOW_CUSTOM_STATS": "true"})
    assert dry.returncode == 0, dry.explain()
    assert storage_snapshot(registry.storage_root) == before
    assert "DRY RUN (restore_apply=true places them)" in dry.stdout, dry.explain()
    assert "next: ansible-playbook -i inventory.yml playbooks/restore.yml (the same -e) -e restore_apply=true" in dry.stdout
    assert "nothing was restored, so there is nothing to verify" in dry.stdout
    assert f"repositories/infra-ci/_manifests/revisions/sha256/{index.children[0].digest[7:]}/link" in dry.stdout
    assert custom_stats(dry)["registry_images"] == ["tools:1"]

    applied = run_local_playbook("restore.yml", tmp_path, dict(extra, restore_apply=True), workdir="apply",
                                 env={"ANSIBLE_SHOW_CUSTOM_STATS": "true"})
    assert applied.returncode == 0, applied.explain()
    assert "infra-ci:latest: restored - " in applied.stdout and f"digest {index.digest} unchanged" in applied.stdout
    assert "tools:1: rebuild - " in applied.stdout
    assert "next: rebuild what no source had: ansible-playbook playbooks/rebuild_ci.yml" in applied.stdout
    assert "registry_images=tools:1" in applied.stdout
    assert "probe on registry-vm: SUMMARY " in applied.stdout, applied.explain()
    assert custom_stats(applied)["registry_images"] == ["tools:1"]
    assert _fully_served(pusher, index) == [] and _served_digest(pusher, "infra-ci", "latest") == index.digest
    assert _fully_served(pusher, lost) != []

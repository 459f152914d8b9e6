# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GC guard with the real registry and the real ``docker-registry garbage-collect``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from ansible_collections.selfhosted.registry.plugins.module_utils._gc_guard import GCOptions, run_guarded_gc
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import scan_storage
from tests.unit.plugins.module_utils.storage_tree import install_registry_tools
from tests.unit.plugins.module_utils.storage_tree import tree_listing as listing  # the storage, to prove it unchanged

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def incident_precondition(registry, pusher):
    """A tagged OCI index with untagged children, plus a blob no manifest references."""
    index = pusher.push_index("infra-ci", "latest", attestations=True, seed="guard")
    stray = pusher.push_blob("infra-ci", b"a layer whose manifest push never happened")
    return index, stray


def options(registry, **overrides) -> GCOptions:
    values = dict(
        storage_root=str(registry.storage_root),
        config_path=str(registry.config_path),
        gc_command=(REGISTRY_BINARY,),
        # The tests stop the registry themselves before the guard runs.
        registry_offline=True,
    )
    values.update(overrides)
    return GCOptions(**values)


def test_guard_refuses_the_delete_untagged_run_that_causes_the_incident(registry, pusher):
    index = incident_precondition(registry, pusher)[0]
    registry.stop()
    before = listing(registry.storage_root)
    outcome = run_guarded_gc(options(registry, delete_untagged=True))
    assert outcome.status == "refused" and outcome.exit_code == 1
    assert not outcome.changed
    blocked_manifests = {b.digest for b in outcome.blockers if b.kind == "manifest"}
    assert blocked_manifests == {child.digest for child in index.children}
    assert all(b.tags == ("latest",) and b.repository == "infra-ci" for b in outcome.blockers)
    blocked_blobs = {b.digest for b in outcome.blockers if b.kind == "blob"}
    assert blocked_blobs and blocked_blobs <= set(index.blob_digests)
    assert "infra-ci:latest" in outcome.message
    # Refusing deleted nothing: the tree is byte for byte and time for time the same.
    assert listing(registry.storage_root) == before
    # Only the dry run was executed.
    assert [command[-2] for command in outcome.commands] == ["--delete-untagged"]
    assert "--dry-run" in outcome.commands[0]
    registry.start()
    for child in index.children:
        assert pusher.manifest_exists("infra-ci", child.digest)


def test_guard_lets_a_plain_gc_through_and_reclaims_the_unreferenced_blob(registry, pusher):
    index, stray = incident_precondition(registry, pusher)
    registry.stop()
    check = run_guarded_gc(options(registry, check_mode=True))
    assert check.status == "would_collect" and not check.changed
    assert check.eligible_blobs == [stray]
    assert check.diff()["before"] == f"blob {stray}\n"
    assert os.path.exists(registry.tree / "blobs" / "sha256" / stray[7:9] / stray[7:] / "data")

    outcome = run_guarded_gc(options(registry))
    assert outcome.status == "collected" and outcome.exit_code == 0, outcome.message
    assert outcome.changed
    assert outcome.deleted_blobs == [stray]
    assert outcome.reclaimed_bytes == len(b"a layer whose manifest push never happened")
    assert not os.path.exists(registry.tree / "blobs" / "sha256" / stray[7:9] / stray[7:])
    assert outcome.scan_after["clean"] is True
    registry.start()
    assert pusher.get_manifest("infra-ci", "latest").status_code == 200
    for child in index.children:
        assert pusher.manifest_exists("infra-ci", child.digest)
        for digest in child.blob_digests:
            assert pusher.blob_exists("infra-ci", digest)

    again = run_guarded_gc(options(registry, check_mode=True))
    assert again.status == "nothing_to_collect" and not again.changed


def test_hooks_stop_the_registry_for_the_real_run_and_restart_it_after(registry, pusher, tmp_path):
    incident_precondition(registry, pusher)
    journal = tmp_path / "journal"
    pid = registry.pid
    # The registry is the test's child: once killed it is a zombie until reaped, which kill -0 still
    # sees, so "alive" means a /proc entry that is not in state Z.
    alive = f"[ -e /proc/{pid} ] && ! grep -q '^State:[[:space:]]*Z' /proc/{pid}/status"
    # The gc command records whether the registry process was alive when each collector run started.
    wrapper = (
        f'if {alive}; then state=running; else state=stopped; fi; '
        f'echo "gc $state $*" >> {journal}; exec {REGISTRY_BINARY} "$@"'
    )
    outcome = run_guarded_gc(
        options(
            registry,
            gc_command=("sh", "-c", wrapper, "gc-wrapper"),
            before_command=("sh", "-c", f"kill {pid}; while {alive}; do sleep 0.1; done; echo before >> {journal}"),
            after_command=("sh", "-c", f"echo after >> {journal}"),
            timeout=120,
        )
    )
    assert outcome.status == "collected", outcome.message
    lines = journal.read_text().splitlines()
    assert lines[0] == "before"
    assert lines[1].startswith("gc stopped garbage-collect --dry-run ")
    assert lines[2].startswith("gc stopped garbage-collect ") and "--dry-run" not in lines[2]
    assert lines[3] == "after"
    assert outcome.warnings == []


def test_after_command_runs_even_when_the_guard_refuses(registry, pusher, tmp_path):
    incident_precondition(registry, pusher)
    journal = tmp_path / "journal"
    outcome = run_guarded_gc(
        options(
            registry,
            delete_untagged=True,
            before_command=("sh", "-c", f"echo before >> {journal}"),
            after_command=("sh", "-c", f"echo after >> {journal}"),
        )
    )
    assert outcome.status == "refused"
    assert journal.read_text().splitlines() == ["before", "after"]


def test_empty_store_is_nothing_to_collect(registry):
    registry.stop()
    outcome = run_guarded_gc(options(registry, delete_untagged=True))
    assert outcome.status == "nothing_to_collect", outcome.message
    assert "no repositories" in outcome.message
    assert outcome.exit_code == 0


def test_repository_without_tags_directory_is_classified(registry, pusher):
    pusher.push_image("tagged", "v1", seed="t")
    pusher.push_image("digest-only", None, seed="d")
    registry.stop()
    before = listing(registry.storage_root)
    outcome = run_guarded_gc(options(registry, delete_untagged=True))
    assert outcome.status == "error" and outcome.exit_code == 2
    assert outcome.failure_kind == "missing_tags_directory"
    assert "repository digest-only has no _manifests/tags directory" in outcome.message
    assert listing(registry.storage_root) == before


def test_damaged_storage_is_classified_and_not_collected(registry, pusher):
    image = pusher.push_image("app", "v1", seed="dmg")
    registry.stop()
    data = registry.tree / "blobs" / "sha256" / image.digest[7:9] / image.digest[7:] / "data"
    data.write_bytes(data.read_bytes()[:10])
    before = listing(registry.storage_root)
    outcome = run_guarded_gc(options(registry))
    assert outcome.status == "error" and outcome.failure_kind == "damaged_storage"
    assert "run the storage scan" in outcome.message
    assert listing(registry.storage_root) == before
    assert any(f.digest == image.digest for f in scan_storage(str(registry.storage_root)).findings)


def test_wrong_storage_root_is_caught_before_collecting(registry, pusher, make_registry):
    pusher.push_image("only-here", "v1", seed="w")
    other = make_registry()
    other.stop()
    from tests.harness.images import ImagePusher

    other.start()
    ImagePusher(other).push_image("elsewhere", "v1", seed="x")
    other.stop()
    registry.stop()
    outcome = run_guarded_gc(options(registry, storage_root=str(other.storage_root)))
    assert outcome.status == "error" and outcome.failure_kind == "storage_mismatch"


def test_installed_command_line_refuses_then_collects(registry, pusher, tmp_path):
    index, stray = incident_precondition(registry, pusher)
    registry.stop()
    parent = install_registry_tools(str(tmp_path / "installed"))
    base = ["python3", "-m", "registry_tools._registry_tools_cli", "gc", "--storage-root", str(registry.storage_root),
            "--config", str(registry.config_path), "--gc-command", REGISTRY_BINARY, "--registry-offline"]

    def run(*extra):
        return subprocess.run(base + list(extra), cwd=parent, capture_output=True, text=True, timeout=300, check=False)

    refused = run("--delete-untagged", "--json-report", str(tmp_path / "refused.json"),
                  "--metrics-file", str(tmp_path / "gc.prom"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    blocked = [line for line in refused.stdout.splitlines() if line.startswith("GC BLOCKED MANIFEST ")]
    assert len(blocked) == len(index.children)
    assert all(" repo=infra-ci " in line and line.endswith(" tags=latest") for line in blocked)
    assert json.loads((tmp_path / "refused.json").read_text())["status"] == "refused"
    assert "registry_gc_refused 1" in (tmp_path / "gc.prom").read_text()

    collected = run("--after-command", "true", "--before-command", "true")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert f"GC DELETED BLOB digest={stray}" in collected.stdout
    assert collected.stdout.splitlines()[-1].startswith("GC COLLECTED ")

    missing = run("--config", str(tmp_path / "missing.yml"))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"ERROR refused to collect: the registry configuration {tmp_path / 'missing.yml'}")
    assert missing.stdout.splitlines()[-1].startswith("GC ERROR ")

    # The right storage, but a configuration the collector itself rejects (no version).
    versionless = tmp_path / "versionless.yml"
    versionless.write_text(f"storage:\n  filesystem:\n    rootdirectory: {registry.storage_root}\n")
    broken = run("--config", str(versionless))
    assert broken.returncode == 2
    assert broken.stderr.startswith("ERROR the dry run failed: the garbage collector rejected its configuration")


def test_symlinked_repository_refuses_the_collection(registry, pusher, tmp_path):
    """The collector follows a repository symlink; a guard that skips it would let -m orphan its index."""
    index = pusher.push_index("infra-ci", "latest", attestations=True, seed="link")
    pusher.push_image("plain", "v1", seed="plain")
    registry.stop()
    repositories = registry.tree / "repositories"
    outside = tmp_path / "moved-infra-ci"
    shutil.move(str(repositories / "infra-ci"), str(outside))
    os.symlink(str(outside), str(repositories / "infra-ci"))
    before = listing(registry.storage_root) + listing(outside)
    outcome = run_guarded_gc(options(registry, delete_untagged=True))
    assert outcome.status == "error" and outcome.exit_code == 2, outcome.message
    assert outcome.failure_kind == "unreadable_storage"
    assert "repositories/infra-ci is a symbolic link" in outcome.message
    assert not outcome.collection_attempted
    assert listing(registry.storage_root) + listing(outside) == before
    for child in index.children:
        assert (outside / "_manifests" / "revisions" / "sha256" / child.digest[7:] / "link").exists()


def test_unreadable_tagged_manifest_refuses_the_collection(registry, pusher, tmp_path):
    """A tagged manifest the guard cannot read (here a symlink the collector would follow) stops the run."""
    image = pusher.push_image("app", "v1", seed="unreadable")
    pusher.push_blob("app", b"unreferenced")
    registry.stop()
    data = registry.tree / "blobs" / "sha256" / image.digest[7:9] / image.digest[7:] / "data"
    elsewhere = tmp_path / "manifest-data"
    shutil.move(str(data), str(elsewhere))
    os.symlink(str(elsewhere), str(data))
    before = listing(registry.storage_root)
    outcome = run_guarded_gc(options(registry))
    assert outcome.status == "error" and outcome.failure_kind == "unreadable_storage", outcome.message
    assert image.digest in outcome.message and "app:v1" in outcome.message
    assert not outcome.collection_attempted
    assert listing(registry.storage_root) == before


def test_other_storage_with_the_same_repository_names_is_refused(registry, pusher, make_registry):
    """Two stores holding the same repository names: neither the names nor the walk tell them apart."""
    pusher.push_index("infra-ci", "latest", attestations=True, seed="here")
    other = make_registry()
    from tests.harness.images import ImagePusher

    ImagePusher(other).push_index("infra-ci", "latest", attestations=True, seed="there")
    ImagePusher(other).push_image("infra-ci", None, seed="untagged-there")
    other.stop()
    registry.stop()
    before = listing(registry.storage_root) + listing(other.storage_root)
    # The guard reads registry's storage while the collector's configuration names the other one.
    outcome = run_guarded_gc(options(registry, config_path=str(other.config_path), delete_untagged=True))
    assert outcome.status == "error" and outcome.failure_kind == "storage_mismatch", outcome.message
    assert f"names rootdirectory {other.storage_root}" in outcome.message
    assert outcome.commands == []
    assert listing(registry.storage_root) + listing(other.storage_root) == before


def test_container_layout_is_proven_by_the_dry_run_walk(registry, pusher, make_registry, tmp_path):
    """With the collector in a container, the configuration names the mount point; the dry run's walk
    (its marked revisions) must match the host's storage root, or nothing runs after the dry run."""
    pusher.push_index("infra-ci", "latest", attestations=True, seed="here")
    other = make_registry()
    from tests.harness.images import ImagePusher

    ImagePusher(other).push_index("infra-ci", "latest", attestations=True, seed="there")
    other.stop()
    registry.stop()
    journal = tmp_path / "journal"
    container_view = tmp_path / "container-config.yml"
    container_view.write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n")
    outcome = run_guarded_gc(
        options(
            registry,
            config_path=str(other.config_path),  # what the "container" collector really reads
            config_on_host=str(container_view),
            storage_root_in_config="/var/lib/registry",
            after_command=("sh", "-c", f"echo after >> {journal}"),
            before_command=("sh", "-c", f"echo before >> {journal}"),
        )
    )
    assert outcome.status == "error" and outcome.failure_kind == "storage_mismatch", outcome.message
    assert "manifest revision infra-ci@sha256:" in outcome.message
    assert not outcome.collection_attempted
    assert journal.read_text().splitlines() == ["before", "after"]

    mounted_elsewhere = run_guarded_gc(
        options(registry, config_on_host=str(container_view), storage_root_in_config="/srv/registry")
    )
    assert mounted_elsewhere.failure_kind == "storage_mismatch"
    assert "names rootdirectory /var/lib/registry, not /srv/registry" in mounted_elsewhere.message


def test_a_writable_registry_is_not_collected_without_a_before_command_or_offline(registry, pusher):
    """A push between the dry run and the collection would not be in the verdict: refuse up front."""
    incident_precondition(registry, pusher)
    before = listing(registry.storage_root)
    outcome = run_guarded_gc(options(registry, registry_offline=False))
    assert outcome.status == "error" and outcome.failure_kind == "registry_writable", outcome.message
    assert outcome.exit_code == 2 and outcome.commands == []
    assert "no before command stops the registry or makes it read-only" in outcome.message
    assert listing(registry.storage_root) == before
    # Looking is always allowed: check mode runs the dry run only.
    assert run_guarded_gc(options(registry, registry_offline=False, check_mode=True)).status == "would_collect"


# A collector that hangs in its real run (the dry run is the real binary): it records its PID and blocks.
def hanging_collector(pid_file) -> tuple:
    script = (
        f'case " $* " in *" --dry-run "*) exec {REGISTRY_BINARY} "$@";; esac; '
        f'sleep 3600 & echo $! > {pid_file}; wait'
    )
    return ("sh", "-c", script, "gc")


def alive_check(pid_file) -> str:
    """Shell that prints 'collector alive' or 'collector stopped' (a zombie counts as stopped)."""
    return (
        f'pid=$(cat {pid_file}); '
        f'if [ -e /proc/$pid ] && ! grep -q "^State:[[:space:]]*Z" /proc/$pid/status; '
        f'then echo collector alive; else echo collector stopped; fi'
    )


def test_a_timeout_stops_the_collector_before_the_after_command(registry, pusher, tmp_path):
    incident_precondition(registry, pusher)
    registry.stop()
    journal, pid_file = tmp_path / "journal", tmp_path / "collector.pid"
    outcome = run_guarded_gc(
        options(
            registry,
            registry_offline=False,
            gc_command=hanging_collector(pid_file),
            gc_timeout=2,
            gc_stop_command=("sh", "-c", f"echo gc-stop >> {journal}"),
            before_command=("sh", "-c", f"echo before >> {journal}"),
            after_command=("sh", "-c", f"{{ {alive_check(pid_file)}; echo after; }} >> {journal}"),
        )
    )
    assert outcome.status == "error" and outcome.failure_kind == "command", outcome.message
    assert "did not finish within 2 seconds" in outcome.message
    assert journal.read_text().splitlines() == ["before", "gc-stop", "collector stopped", "after"]


def test_signals_stop_the_collector_and_still_run_the_after_command(registry, pusher, tmp_path):
    import signal
    import time

    incident_precondition(registry, pusher)
    registry.stop()
    parent = install_registry_tools(str(tmp_path / "installed"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        journal, pid_file = tmp_path / f"journal-{signum}", tmp_path / f"collector-{signum}.pid"
        report = tmp_path / f"gc-{signum}.json"
        process = subprocess.Popen(
            ["python3", "-m", "registry_tools._registry_tools_cli", "gc", "--storage-root", str(registry.storage_root),
             "--config", str(registry.config_path), "--json-report", str(report),
             "--gc-command", " ".join(shlex_quote(word) for word in hanging_collector(pid_file)),
             "--gc-stop-command", f"sh -c 'echo gc-stop >> {journal}'",
             "--before-command", f"sh -c 'echo before >> {journal}'",
             "--after-command", "sh -c " + shlex_quote(f"{{ {alive_check(pid_file)}; echo after; }} >> {journal}")],
            cwd=parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # Wait (bounded by the test's own timeout) until the collector is really running.
            while not (pid_file.exists() and pid_file.read_text().strip()):
                assert process.poll() is None, process.communicate()
                time.sleep(0.05)
            process.send_signal(signum)
            stdout, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 2, stdout + stderr
        name = signal.Signals(signum).name
        assert stderr == f"ERROR interrupted by {name} before the run finished; nothing more was started\n"
        assert journal.read_text().splitlines() == ["before", "gc-stop", "collector stopped", "after"]
        saved = json.loads(report.read_text())
        assert saved["status"] == "error" and saved["failure_kind"] == "interrupted"
    # Nothing was collected: the incident's stray blob is still there, and the index still pulls.
    registry.start()
    assert pusher.get_manifest("infra-ci", "latest").status_code == 200


def shlex_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host tools and the probe on every Python a registry host may have, against the real registry.

Python 3.9 (Debian 11, the oldest: RHEL 9 has it too) and 3.13 (Debian 13) run in the root file systems
scripts/host-roots makes, with chroot; 3.11 is this machine's own /usr/bin/python3 (Debian 12). Each runs
the packages laid out as the roles lay them out on the host, as cron runs them (``python3 -m``, from /, a
bare environment): the scan on the incident the real garbage collector made, a guarded collection with
the real collector, tag retention through the registry's API, and the probe. Every Python must give what
the collection's own code gives in this test process.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import time
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import ORPHAN_INDEX, scan_storage
from tests.harness.host_python import HOST_PYTHONS, HostPython, carry_collector
from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.probe import Probe
from tests.harness.registry import REGISTRY_BINARY, RegistryServer
from tests.unit.plugins.module_utils.storage_tree import install_registry_tools, tree_listing

pytestmark = pytest.mark.slow
DAY = 86400.0


@pytest.fixture(params=HOST_PYTHONS, ids=[python.id for python in HOST_PYTHONS])
def host_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[HostPython]:
    """One host Python; its root (if it has one) sees this worker's temporary directories, registries' included."""
    python: HostPython = request.param
    assert python.version_seen() == python.version, f"{python.id} is not Python {python.version}"
    with python.sharing(tmp_path_factory.getbasetemp()):
        yield python


def run_module(python: HostPython, library: str, module: str, *arguments: str) -> t.Any:
    return python.run("-m", module, *arguments, env={"PYTHONPATH": library})


def test_the_scan_reports_the_incident_as_one_orphan_index(
    host_python: HostPython, registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path
) -> None:
    incident = reproduce_incident(registry, pusher)
    expected = scan_storage(str(registry.storage_root))
    library = install_registry_tools(str(tmp_path / "lib"))
    report = tmp_path / "scan.json"
    completed = run_module(host_python, library, "registry_tools._registry_tools_cli", "scan",
                           "--storage-root", str(registry.tree), "--json-report", str(report))
    assert completed.returncode == 1, completed.stdout + completed.stderr
    findings = [line for line in completed.stdout.splitlines() if not line.startswith("SUMMARY ")]
    assert findings == [finding.log_line() for finding in expected.findings]
    orphans = [line for line in findings if line.startswith("ORPHAN INDEX ")]
    assert len(orphans) == 1 and f" digest={incident.index.digest} " in orphans[0], findings
    written = json.loads(report.read_text())
    assert written["broken_tags"] == ["infra-ci:latest"]
    orphan = [finding for finding in written["findings"] if finding["kind"] == ORPHAN_INDEX]
    assert len(orphan) == 1 and sorted(orphan[0]["missing"]) == sorted(incident.missing_manifests)


def test_the_guard_refuses_the_incident_and_lets_a_plain_collection_through(
    host_python: HostPython, registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path
) -> None:
    index = pusher.push_index("infra-ci", "latest", attestations=True, seed="pythons")
    stray = pusher.push_blob("infra-ci", b"a layer whose manifest push never happened")
    registry.stop()
    collector = carry_collector(tmp_path / "collector", REGISTRY_BINARY)
    library = install_registry_tools(str(tmp_path / "lib"))

    def guarded(*extra: str) -> t.Any:
        return run_module(host_python, library, "registry_tools._registry_tools_cli", "gc",
                          "--storage-root", str(registry.storage_root), "--config", str(registry.config_path),
                          "--gc-command", shlex.join(collector), "--registry-offline", *extra)

    before = tree_listing(registry.storage_root)
    refused = guarded("--delete-untagged", "--json-report", str(tmp_path / "refused.json"),
                      "--metrics-file", str(tmp_path / "gc.prom"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    blocked = [line for line in refused.stdout.splitlines() if line.startswith("GC BLOCKED MANIFEST ")]
    assert sorted(line.split(" digest=")[1].split(" ")[0] for line in blocked) == sorted(
        child.digest for child in index.children)
    assert all(" repo=infra-ci " in line and line.endswith(" tags=latest") for line in blocked)
    assert json.loads((tmp_path / "refused.json").read_text())["status"] == "refused"
    assert "registry_gc_refused 1" in (tmp_path / "gc.prom").read_text()
    assert tree_listing(registry.storage_root) == before

    journal = tmp_path / "journal"
    collected = guarded("--before-command", f"sh -c 'echo before >> {journal}'",
                        "--after-command", f"sh -c 'echo after >> {journal}'")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert f"GC DELETED BLOB digest={stray}" in collected.stdout
    assert collected.stdout.splitlines()[-1].startswith("GC COLLECTED ")
    assert journal.read_text().splitlines() == ["before", "after"]
    assert not registry.blob_data_path(stray).exists()
    registry.start()
    assert pusher.get_manifest("infra-ci", "latest").status_code == 200
    for child in index.children:
        assert pusher.manifest_exists("infra-ci", child.digest)
        assert all(pusher.blob_exists("infra-ci", digest) for digest in child.blob_digests)


def test_retention_deletes_the_oldest_tags_through_the_api(
    host_python: HostPython, registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path
) -> None:
    images = {tag: pusher.push_image("team/app", tag, seed=tag) for tag in ("build-1", "build-2", "build-3")}
    for days, tag in zip((30, 20, 10), images):
        stamp = time.time() - days * DAY
        os.utime(registry.tag_path("team/app", tag) / "current" / "link", (stamp, stamp))
    library = install_registry_tools(str(tmp_path / "lib"))
    completed = run_module(host_python, library, "registry_tools._tag_retention",
                           "--storage-root", str(registry.storage_root), "--registry-url", registry.url,
                           "--keep", "1", "--min-age-days", "1", "--report", str(tmp_path / "retention.json"),
                           "--apply")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    deleted = [line for line in completed.stdout.splitlines() if line.startswith("DELETE ")]
    assert sorted(line.split(" digest=")[1].split(" ")[0] for line in deleted) == sorted(
        images[tag].digest for tag in ("build-1", "build-2"))
    assert pusher.list_tags("team/app") == ["build-3"]
    assert pusher.get_manifest("team/app", "build-3").status_code == 200
    assert all(pusher.blob_exists("team/app", digest) for digest in images["build-3"].blob_digests)
    assert json.loads((tmp_path / "retention.json").read_text())["ok"] is True


def test_the_probe_verifies_a_healthy_catalog_then_names_the_broken_tag(
    host_python: HostPython, registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path
) -> None:
    probe = Probe(tmp_path / "probe", registry.url)

    def run() -> t.Any:
        argv = probe.argv()
        assert argv[1:3] == ["-m", "registry_probe._integrity_probe"]
        return host_python.run(*argv[1:], env={"PYTHONPATH": str(probe.tools_dir)})

    pusher.push_image("team/app", "v1", seed="healthy")
    healthy = run()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.splitlines()[-1].startswith("SUMMARY verified=yes images=1 broken=0 unverified=0")

    incident = reproduce_incident(registry, pusher)
    broken = run()
    assert broken.returncode == 1, broken.stdout + broken.stderr
    lines = [line for line in broken.stdout.splitlines() if line.startswith("BROKEN ")]
    assert len(lines) == 1 and lines[0].startswith("BROKEN image=infra-ci:latest object=manifest"), broken.stdout
    report = json.loads(probe.report_path.read_text())
    assert {entry["digest"] for entry in report["broken"] if entry["object_type"] == "manifest"} == set(
        incident.missing_manifests)
    metrics = probe.metrics_path.read_text()
    assert re.search(r'^registry_verify_image_broken\{[^}]*repository="infra-ci",tag="latest"[^}]*\} 1$', metrics, re.M), metrics


def test_the_probe_verifies_over_tls_with_the_given_ca(
    host_python: HostPython, registry_tls: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    tmp_path: pathlib.Path,
) -> None:
    """Python 3.13 verifies certificates more strictly (VERIFY_X509_STRICT): the probe's TLS must still pass."""
    make_pusher(registry_tls).push_image("team/app", "v1", seed="tls")
    probe = Probe(tmp_path / "probe", registry_tls.url)
    argv = probe.argv("--ca-path", str(registry_tls.ca_path))
    completed = host_python.run(*argv[1:], env={"PYTHONPATH": str(probe.tools_dir)})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.splitlines()[-1].startswith("SUMMARY verified=yes images=1 broken=0 unverified=0")
    untrusted = host_python.run(*probe.argv()[1:], env={"PYTHONPATH": str(probe.tools_dir)})
    assert untrusted.returncode == 2 and "certificate" in untrusted.stdout + untrusted.stderr, untrusted.stdout

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A manifest the real registry accepts but Python's json cannot parse (nested deeper than its recursion limit).

The registry (Go) accepts JSON nested up to 10,000 levels; Python's parser recurses and raises
RecursionError far earlier. Any user with push rights can store one. The scanner, the GC guard and
tag retention must treat it as a corrupt file, never crash, and keep their exit codes and reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from ansible_collections.selfhosted.registry.plugins.module_utils._gc_guard import GCOptions, run_guarded_gc
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import CORRUPT_FILE, scan_storage
from ansible_collections.selfhosted.registry.plugins.module_utils._tag_retention import (
    RetentionPolicy,
    run_retention,
)
from tests.unit.plugins.module_utils.storage_tree import install_registry_tools

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
DEPTH = 5000


def push_deep_manifest(pusher, repository: str, tag: str) -> str:
    """An ordinary image manifest with one extra field nested DEPTH levels deep, pushed by tag."""
    image = pusher.push_image(repository, "base", seed="deep")
    body = pusher.get_manifest(repository, image.digest).content
    assert body.endswith(b"}")
    deep = body[:-1] + b',"x":' + b"[" * DEPTH + b"]" * DEPTH + b"}"
    return pusher.put_manifest(repository, tag, deep, "application/vnd.oci.image.manifest.v1+json")


def test_the_registry_accepts_it_and_python_cannot_parse_it(registry, pusher):
    digest = push_deep_manifest(pusher, "hostile", "deep")
    response = pusher.get_manifest("hostile", "deep")
    assert response.status_code == 200 and response.headers["Docker-Content-Digest"] == digest
    try:
        json.loads(response.content)
    except RecursionError:
        pass
    else:
        raise AssertionError(f"json.loads parsed {DEPTH} levels; raise DEPTH so the test keeps its meaning")


def test_scanner_reports_a_corrupt_file_and_the_cli_writes_report_and_metrics(registry, pusher, tmp_path):
    digest = push_deep_manifest(pusher, "hostile", "deep")
    registry.stop()
    result = scan_storage(str(registry.storage_root))
    corrupt = [finding for finding in result.findings if finding.kind == CORRUPT_FILE]
    assert [finding.digest for finding in corrupt] == [digest]
    assert corrupt[0].tags == ("deep",) and "nested" in corrupt[0].reason

    parent = install_registry_tools(str(tmp_path / "installed"))
    completed = subprocess.run(
        ["python3", "-m", "registry_tools._registry_tools_cli", "scan", "--storage-root", str(registry.storage_root),
         "--json-report", str(tmp_path / "scan.json"), "--metrics-file", str(tmp_path / "scan.prom")],
        cwd=parent, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    assert any(line.startswith("CORRUPT FILE ") and digest in line for line in completed.stdout.splitlines())
    assert json.loads((tmp_path / "scan.json").read_text())["summary"]["corrupt_file"] == 1
    assert 'registry_storage_findings{kind="corrupt_file"} 1' in (tmp_path / "scan.prom").read_text()


def test_gc_guard_refuses_instead_of_crashing(registry, pusher):
    digest = push_deep_manifest(pusher, "hostile", "deep")
    pusher.push_blob("hostile", b"unreferenced")
    registry.stop()
    outcome = run_guarded_gc(
        GCOptions(
            str(registry.storage_root), str(registry.config_path), gc_command=(REGISTRY_BINARY,), registry_offline=True
        )
    )
    assert outcome.exit_code == 2 and outcome.failure_kind == "unreadable_storage", outcome.message
    assert digest in outcome.message and "hostile:deep" in outcome.message
    assert not outcome.collection_attempted


def test_tag_retention_keeps_the_repository_instead_of_crashing(registry, pusher):
    digest = push_deep_manifest(pusher, "hostile", "deep")
    registry.stop()
    lines = []
    result = run_retention(
        str(registry.storage_root), RetentionPolicy(keep_newest=0, min_age_days=0, protected_tags=()), None,
        emit=lines.append,
    )
    assert result.planned == []
    assert any(digest in error for error in result.errors), result.errors

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage scanner on storage written by the real registry and broken by the real garbage collector."""

from __future__ import annotations

import json
import subprocess

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import ORPHAN_INDEX, scan_storage
from tests.harness.incident import reproduce_incident
from tests.unit.plugins.module_utils.storage_tree import install_registry_tools


def run_installed_scan(tmp_path, *arguments):
    """Run the scanner exactly as the role installs it: system python3, package registry_tools."""
    parent = install_registry_tools(str(tmp_path / "installed"))
    return subprocess.run(
        ["python3", "-m", "registry_tools._registry_tools_cli", "scan", *arguments],
        cwd=parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("variant", ["untagged_children", "tag_dirs_removed"])
def test_incident_gives_exactly_one_orphan_index_with_the_missing_children(registry, pusher, variant, tmp_path):
    incident = reproduce_incident(registry, pusher, variant=variant)
    result = scan_storage(str(registry.storage_root))
    harmful = [finding for finding in result.findings if finding.harmful]
    assert [finding.kind for finding in harmful] == [ORPHAN_INDEX], [f.log_line() for f in result.findings]
    finding = harmful[0]
    assert finding.repository == "infra-ci"
    assert finding.digest == incident.index.digest
    assert finding.media_type == "application/vnd.oci.image.index.v1+json"
    assert sorted(finding.missing) == sorted(incident.missing_manifests)
    assert finding.tags == ("latest",)
    assert result.broken_tags == {"infra-ci:latest"}
    # The tagged image sharing a layer with the index is intact and not named.
    assert not any(f.repository == "infra-ci" and "latest-base" in f.tags for f in result.findings)

    completed = run_installed_scan(tmp_path, "--storage-root", str(registry.tree), "--json-report",
                                   str(tmp_path / "report.json"))
    assert completed.returncode == 1, completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("ORPHAN INDEX ")]
    assert lines == [finding.log_line()]
    assert f"missing={','.join(finding.missing)}" in lines[0] and " tags=latest " in lines[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["broken_tags"] == ["infra-ci:latest"]


def test_healthy_registry_storage_has_no_findings(registry, pusher, tmp_path):
    pusher.push_image("plain", "1.0", fmt="oci", seed="a")
    pusher.push_image("plain", "1.0-docker", fmt="docker", seed="b")
    pusher.push_image("plain", None, seed="untagged")
    pusher.push_index("infra-ci", "latest", fmt="oci", attestations=True, seed="c")
    pusher.push_index("team/app/api", "2.1", fmt="docker", attestations=True, seed="d")
    pusher.push_index(
        "team/app", "multi", fmt="oci", platforms=("linux/amd64", "linux/arm64", "linux/s390x"), seed="e"
    )
    pusher.push_index("team/app", "built", child_tags=["built-amd64", "built-arm64"], seed="f")
    pusher.push_foreign_layer_image("windows/base", "ltsc")
    result = scan_storage(str(registry.storage_root))
    assert result.findings == []
    assert result.repositories == 5
    assert result.revisions >= 20

    completed = run_installed_scan(tmp_path, "--storage-root", str(registry.storage_root))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("SUMMARY clean=yes repositories=5 ")


def test_api_delete_of_a_child_then_plain_gc_is_found(registry, pusher):
    index = pusher.push_index("app", "latest", attestations=False, seed="g")
    child = index.children[0]
    assert pusher.delete_manifest("app", child.digest).status_code == 202
    registry.stop()
    assert registry.garbage_collect().returncode == 0
    registry.start()
    result = scan_storage(str(registry.storage_root))
    orphan = [finding for finding in result.findings if finding.kind == ORPHAN_INDEX]
    assert len(orphan) == 1 and orphan[0].missing == (child.digest,) and orphan[0].tags == ("latest",)


def test_layer_links_a_plain_gc_leaves_behind_are_listed_and_exit_0(registry, pusher, tmp_path):
    """The choice stated in the CLI help and README: an orphan layer link nothing references is exit 0.

    The registry's own plain GC deletes blob data and keeps the repository's _layers links, so every
    collection of a deleted image leaves them; nothing can pull through them (no manifest names them,
    and a re-push uploads again because the data is gone). Exit 1 for them would make every scan after
    every GC red. A layer link without data that a manifest does reference is exit 1 (broken manifest).
    """
    image = pusher.push_image("app", "v1", seed="deleted")
    pusher.push_image("app", "v2", seed="kept")
    assert pusher.delete_manifest("app", image.digest).status_code == 202
    registry.stop()
    assert registry.garbage_collect().returncode == 0
    layer_links = registry.tree / "repositories" / "app" / "_layers" / "sha256"
    left = [d for d in image.blob_digests if (layer_links / d[7:] / "link").exists()]
    assert left == image.blob_digests, "the registry's GC no longer leaves layer links behind"

    completed = run_installed_scan(tmp_path, "--storage-root", str(registry.storage_root))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("ORPHAN LAYER LINK ")]
    assert sorted(line.split(" digest=")[1].split(" ")[0] for line in lines) == sorted(image.blob_digests)
    assert all(" referenced=no " in line for line in lines)
    assert completed.stdout.splitlines()[-1].startswith("SUMMARY clean=yes ")
    assert f"orphan_layer_link={len(image.blob_digests)}" in completed.stdout
    helped = run_installed_scan(tmp_path, "--help")
    assert "referenced=no" in helped.stdout and "keeps exit 0" in helped.stdout

    # The same link is exit 1 once a manifest references it: then a tag is broken.
    kept = pusher_kept_layer(registry)
    (registry.tree / "blobs" / "sha256" / kept[7:9] / kept[7:] / "data").unlink()
    broken = run_installed_scan(tmp_path, "--storage-root", str(registry.storage_root))
    assert broken.returncode == 1
    assert any(line.startswith("ORPHAN LAYER LINK ") and kept in line and " referenced=yes " in line
               for line in broken.stdout.splitlines())


def pusher_kept_layer(registry) -> str:
    """The layer digest of app:v2 read from storage (its manifest's last layer)."""
    tag_link = registry.tree / "repositories" / "app" / "_manifests" / "tags" / "v2" / "current" / "link"
    digest = tag_link.read_text()
    manifest = json.loads((registry.tree / "blobs" / "sha256" / digest[7:9] / digest[7:] / "data").read_text())
    return manifest["layers"][-1]["digest"]

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scanner against a corpus of healthy and damaged storage trees written file by file."""

from __future__ import annotations

import errno
import json
import os
import re
import time

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils import _storage_scan as scan_module
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import (
    BROKEN_MANIFEST,
    CORRUPT_FILE,
    DANGLING_REVISION,
    DANGLING_TAG,
    ORPHAN_INDEX,
    ORPHAN_LAYER_LINK,
    ScanError,
    StorageReader,
    is_digest,
    scan_storage,
)
from tests.unit.plugins.module_utils.storage_tree import OCI_INDEX, DOCKER_MANIFEST, StorageTree, digest_of


@pytest.fixture
def tree(tmp_path):
    return StorageTree(str(tmp_path / "storage"))


def healthy(tree: StorageTree):
    """A store with both formats, nested names, an untagged image and shared layers."""
    oci = tree.multiarch("infra-ci", "latest", fmt="oci", platforms=3, seed="a")
    docker = tree.multiarch("team/app/api", "1.0", fmt="docker", seed="b")
    base = tree.image("team/app", "base", layers=1, seed="base")
    tree.image("team/app", "derived", seed="derived", shared_layers=base.layers)
    tree.image("team/app", None, seed="untagged")
    return oci, docker


def kinds(result):
    return sorted(finding.kind for finding in result.findings)


def only(result, kind):
    found = [finding for finding in result.findings if finding.kind == kind]
    assert len(found) == 1, result.findings
    return found[0]


def test_healthy_store_has_no_findings(tree):
    healthy(tree)
    result = scan_storage(tree.root)
    assert result.findings == []
    assert result.clean
    assert result.repositories == 3
    assert result.revisions == 4 + 3 + 3
    assert result.tags == 4


def test_accepts_the_v2_directory_as_well_as_the_rootdirectory(tree):
    healthy(tree)
    assert scan_storage(tree.v2).revisions == scan_storage(tree.root).revisions == 10


@pytest.mark.parametrize("make", ["missing", "file", "unrelated_dir"])
def test_unusable_root_is_one_clear_error(tmp_path, make):
    path = tmp_path / "root"
    if make == "file":
        path.write_text("x")
    elif make == "unrelated_dir":
        (path / "photos").mkdir(parents=True)
    with pytest.raises(ScanError, match=re.escape(str(path))):
        scan_storage(str(path))


def test_empty_rootdirectory_of_a_fresh_registry_is_an_empty_store(tmp_path):
    result = scan_storage(str(tmp_path))
    assert result.clean and result.repositories == 0 and result.findings == []


def test_store_without_repositories_is_clean(tmp_path):
    (tmp_path / "docker" / "registry" / "v2" / "blobs").mkdir(parents=True)
    result = scan_storage(str(tmp_path))
    assert result.clean and result.repositories == 0


def test_orphan_index_names_exactly_the_missing_children_and_the_tag(tree):
    oci = healthy(tree)[0]
    for child in oci.children[:2]:
        tree.remove_revision("infra-ci", child.digest)
    result = scan_storage(tree.root)
    finding = only(result, ORPHAN_INDEX)
    assert finding.repository == "infra-ci"
    assert finding.digest == oci.digest
    assert finding.media_type == OCI_INDEX
    assert set(finding.missing) == {child.digest for child in oci.children[:2]}
    assert finding.tags == ("latest",)
    assert result.broken_tags == {"infra-ci:latest"}
    assert not result.clean
    line = finding.log_line()
    assert line.startswith(f"ORPHAN INDEX repo=infra-ci digest={oci.digest} media_type={OCI_INDEX} missing=")
    assert " tags=latest" in line


def test_child_without_data_is_orphan_index_and_dangling_revision_reached_through_the_index(tree):
    docker = healthy(tree)[1]
    child = docker.children[0]
    tree.remove_blob(child.digest)
    result = scan_storage(tree.root)
    assert kinds(result) == [DANGLING_REVISION, ORPHAN_INDEX]
    assert only(result, ORPHAN_INDEX).missing == (child.digest,)
    dangling = only(result, DANGLING_REVISION)
    assert dangling.digest == child.digest
    assert dangling.tags == ("1.0",)


def test_broken_manifest_when_a_layer_link_is_missing(tree):
    image = tree.image("app", "v1", fmt="docker", seed="s")
    os.unlink(tree.layer_link("app", image.layers[1]))
    finding = only(scan_storage(tree.root), BROKEN_MANIFEST)
    assert finding.missing == (image.layers[1],)
    assert finding.media_type == DOCKER_MANIFEST
    assert finding.tags == ("v1",)


def test_layer_without_data_is_broken_manifest_and_referenced_orphan_layer_link(tree):
    oci = healthy(tree)[0]
    child = oci.children[1]
    tree.remove_blob(child.config)
    result = scan_storage(tree.root)
    assert kinds(result) == [BROKEN_MANIFEST, ORPHAN_LAYER_LINK]
    broken = only(result, BROKEN_MANIFEST)
    assert broken.digest == child.digest and broken.missing == (child.config,)
    assert broken.tags == ("latest",)
    link = only(result, ORPHAN_LAYER_LINK)
    assert link.referenced is True and link.harmful
    assert link.tags == ("latest",)
    assert "referenced=yes" in link.log_line()


def test_unreferenced_layer_link_without_data_is_reported_but_harmless(tree):
    healthy(tree)
    stray = tree.blob(b"pushed layer, manifest never came")
    tree.link_layer("team/app", stray)
    tree.remove_blob(stray)
    result = scan_storage(tree.root)
    link = only(result, ORPHAN_LAYER_LINK)
    assert link.referenced is False and not link.harmful
    assert "referenced=no" in link.log_line()
    assert result.clean
    assert result.broken_tags == set()


def test_dangling_revision_of_an_untagged_image(tree):
    image = tree.image("app", None, seed="lonely")
    tree.remove_blob(image.digest)
    finding = only(scan_storage(tree.root), DANGLING_REVISION)
    assert finding.digest == image.digest and finding.tags == ()


def test_tag_without_revision_is_dangling_tag(tree):
    image = tree.image("app", "v1", seed="x")
    tree.remove_revision("app", image.digest)
    result = scan_storage(tree.root)
    finding = only(result, DANGLING_TAG)
    assert finding.tags == ("v1",) and finding.digest == image.digest
    assert result.broken_tags == {"app:v1"}
    assert finding.log_line().startswith(f"DANGLING TAG repo=app digest={image.digest}")


def test_tag_whose_manifest_lost_its_data_is_dangling_tag_and_revision(tree):
    image = tree.image("app", "v1", seed="x")
    tree.remove_blob(image.digest)
    assert kinds(scan_storage(tree.root)) == [DANGLING_REVISION, DANGLING_TAG]


def test_tag_history_is_reported_separately_from_current_tags(tree):
    old = tree.multiarch("app", "latest", seed="old")
    tree.multiarch("app", "latest", seed="new")  # moves latest; old stays in the tag's history
    tree.remove_revision("app", old.children[0].digest)
    finding = only(scan_storage(tree.root), ORPHAN_INDEX)
    assert finding.digest == old.digest
    assert finding.tags == ()
    assert finding.history_tags == ("latest",)


def test_child_linked_only_as_a_layer_is_accepted_like_the_registry_does(tree):
    index = tree.multiarch("app", "latest")
    child = index.children[0].digest
    tree.remove_revision("app", child)
    tree.link_layer("app", child)
    assert scan_storage(tree.root).findings == []


def test_foreign_layer_that_is_not_stored_is_not_missing(tree):
    config = tree.blob(b'{"os":"windows"}')
    tree.link_layer("win", config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 16},
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "digest": digest_of(b"never uploaded"),
                "size": 14,
                "urls": ["https://127.0.0.1/layer"],
            }
        ],
    }
    digest = tree.blob(json.dumps(manifest).encode())
    tree.link_revision("win", digest)
    tree.tag("win", "ltsc", digest)
    assert scan_storage(tree.root).findings == []


def test_oci_manifest_without_media_type_field_is_recognised(tree):
    config = tree.blob(b"{}")
    tree.link_layer("bare", config)
    body = json.dumps({"schemaVersion": 2, "config": {"digest": config, "size": 2}, "layers": []}).encode()
    digest = tree.blob(body)
    tree.link_revision("bare", digest)
    tree.tag("bare", "t", digest)
    index_body = json.dumps({"schemaVersion": 2, "manifests": [{"digest": digest, "size": len(body)}]}).encode()
    index = tree.blob(index_body)
    tree.link_revision("bare", index)
    tree.tag("bare", "i", index)
    tree.remove_revision("bare", digest)
    result = scan_storage(tree.root)
    assert kinds(result) == [DANGLING_TAG, ORPHAN_INDEX]
    assert only(result, ORPHAN_INDEX).media_type == OCI_INDEX


# -- corrupt links ---------------------------------------------------------------------------------
CORRUPT_LINKS = {
    "garbage": (b"not a digest at all", "link does not hold"),
    "empty": (b"", "link is empty"),
    "uppercase": (None, "not lowercase"),
    "trailing_newline": (None, "trailing newline"),
    "traversal": (b"../../../../../../etc/passwd", "holds a path"),
    "digest_traversal": (b"sha256:../../../blobs", "holds a path"),
    "binary": (b"\xff\xfe\x00", "non-ASCII"),
    "other_digest": (None, "not the digest its directory is named after"),
}


def _corrupt_content(name: str, digest: str, other: str) -> bytes:
    content = CORRUPT_LINKS[name][0]
    if name == "uppercase":
        return ("sha256:" + digest[7:].upper()).encode()
    if name == "trailing_newline":
        return (digest + "\n").encode()
    if name == "other_digest":
        return other.encode()
    return content


# A tag holding another valid digest is a retag, not corruption, so that pair is left out.
@pytest.mark.parametrize(
    "name, where",
    [
        (name, where)
        for name in sorted(CORRUPT_LINKS)
        for where in ("revision", "layer", "tag", "tag_history")
        if (name, where) != ("other_digest", "tag")
    ],
)
def test_corrupt_link_is_reported_and_never_followed(tree, name, where, monkeypatch):
    image = tree.image("app", "v1", seed="c")
    other = tree.image("app", None, seed="other").digest
    path = {
        "revision": tree.revision_link("app", image.digest),
        "layer": tree.layer_link("app", image.layers[0]),
        "tag": tree.tag_link("app", "v1"),
        "tag_history": tree.tag_history_link("app", "v1", image.digest),
    }[where]
    tree.write_file(path, _corrupt_content(name, image.digest, other))
    opened = []
    real_open = os.open

    def recording_open(target, *args, **kwargs):
        opened.append(os.path.realpath(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(scan_module.os, "open", recording_open)
    result = scan_storage(tree.root)
    corrupt = [finding for finding in result.findings if finding.kind == CORRUPT_FILE]
    assert len(corrupt) == 1, result.findings
    assert corrupt[0].path == os.path.relpath(path, tree.v2)
    assert CORRUPT_LINKS[name][1] in corrupt[0].reason
    assert corrupt[0].repository == "app"
    assert corrupt[0].log_line().startswith(f"CORRUPT FILE path={corrupt[0].path} repo=app ")
    # Nothing outside the storage tree was opened.
    assert all(target.startswith(os.path.realpath(tree.v2)) for target in opened)


def test_corrupt_revision_link_leaves_the_tag_dangling(tree):
    image = tree.image("app", "v1", seed="c")
    tree.write_file(tree.revision_link("app", image.digest), b"garbage")
    result = scan_storage(tree.root)
    assert kinds(result) == [CORRUPT_FILE, DANGLING_TAG]


def test_directory_named_like_no_digest_is_reported(tree):
    tree.image("app", "v1", seed="c")
    os.makedirs(os.path.join(tree.repo_dir("app"), "_layers", "sha256", "not-a-digest"))
    finding = only(scan_storage(tree.root), CORRUPT_FILE)
    assert "not named after a sha256 digest" in finding.reason


# -- corrupt manifest data -------------------------------------------------------------------------
def _replace_data(tree: StorageTree, digest: str, data: bytes) -> None:
    with open(tree.blob_data(digest), "wb") as handle:
        handle.write(data)


@pytest.mark.parametrize(
    "body, reason",
    [
        (lambda raw: raw[: len(raw) // 2], "does not match its digest"),
        (lambda raw: raw.replace(b"amd64", b"arm64"), "does not match its digest"),
        (lambda raw: b"", "does not match its digest"),
    ],
    ids=["truncated", "altered", "emptied"],
)
def test_manifest_data_that_does_not_hash_to_its_digest_is_corrupt(tree, body, reason):
    index = tree.multiarch("app", "latest", seed="m")
    path = tree.blob_data(index.digest)
    with open(path, "rb") as handle:
        raw = handle.read()
    _replace_data(tree, index.digest, body(raw))
    result = scan_storage(tree.root)
    finding = only(result, CORRUPT_FILE)
    assert finding.digest == index.digest
    assert finding.tags == ("latest",)
    assert reason in finding.reason
    assert not result.clean


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x1f\x8b\x08 gzip, not json", "not valid JSON"),
        (b'{"schemaVersion": 2, "config": ', "not valid JSON"),
        (b"[1, 2, 3]", "not an object"),
        (b'{"schemaVersion": 2}', "neither manifests, config nor layers"),
        (b'{"schemaVersion": 2, "manifests": [{"digest": "md5:abc"}]}', "no valid sha256 digest"),
        (b'{"schemaVersion": 2, "manifests": {"a": 1}}', "manifests is not a list"),
        (b'{"schemaVersion": 2, "config": {"digest": "sha256:../../x"}}', "no valid sha256 digest"),
    ],
    ids=["binary", "truncated_json", "array", "no_references", "bad_child_digest", "manifests_dict", "path_digest"],
)
def test_unparsable_manifest_is_corrupt_with_its_reason(tree, data, reason):
    # The data is stored under its own digest, so only the parser can object.
    digest = tree.blob(data)
    tree.link_revision("app", digest)
    tree.tag("app", "bad", digest)
    finding = only(scan_storage(tree.root), CORRUPT_FILE)
    assert finding.digest == digest and finding.tags == ("bad",)
    assert reason in finding.reason


def test_schema1_manifest_is_understood(tree):
    layer = tree.blob(b"schema1 layer")
    tree.link_layer("old", layer)
    body = json.dumps({"schemaVersion": 1, "name": "old", "fsLayers": [{"blobSum": layer}]}).encode()
    digest = tree.blob(body)
    tree.link_revision("old", digest)
    tree.tag("old", "v1", digest)
    assert scan_storage(tree.root).findings == []
    tree.remove_blob(layer)
    assert kinds(scan_storage(tree.root)) == [BROKEN_MANIFEST, ORPHAN_LAYER_LINK]


# -- symlinks, special files -----------------------------------------------------------------------
def test_repository_symlinked_outside_the_root_is_reported_not_followed(tree, tmp_path):
    healthy(tree)
    outside = StorageTree(str(tmp_path / "outside"))
    outside.image("secret", "v1", seed="outside")
    os.symlink(outside.repo_dir("secret"), os.path.join(tree.v2, "repositories", "escaped"))
    result = scan_storage(tree.root)
    finding = only(result, CORRUPT_FILE)
    assert finding.path == os.path.join("repositories", "escaped")
    assert "symbolic link" in finding.reason
    assert result.repositories == 3


def test_symlink_loop_does_not_loop(tree):
    healthy(tree)
    os.symlink(".", os.path.join(tree.repo_dir("team"), "loop"))
    os.symlink("../..", os.path.join(tree.repo_dir("team/app"), "_layers", "sha256", "up"))
    result = scan_storage(tree.root)
    assert kinds(result) == [CORRUPT_FILE, CORRUPT_FILE]
    assert result.repositories == 3


def test_blob_data_symlinked_outside_is_not_read(tree, tmp_path):
    image = tree.image("app", "v1", seed="s")
    secret = tmp_path / "secret"
    secret.write_bytes(open(tree.blob_data(image.digest), "rb").read())
    os.unlink(tree.blob_data(image.digest))
    os.symlink(str(secret), tree.blob_data(image.digest))
    finding = only(scan_storage(tree.root), CORRUPT_FILE)
    assert "symbolic link" in finding.reason and finding.digest == image.digest


def test_blob_prefix_directory_symlinked_outside_is_not_followed(tree, tmp_path):
    image = tree.image("app", "v1", seed="s", layers=0)
    prefix = os.path.dirname(tree.blob_dir(image.config))
    moved = tmp_path / "moved-prefix"
    os.rename(prefix, moved)
    os.symlink(str(moved), prefix)
    result = scan_storage(tree.root)
    assert CORRUPT_FILE in kinds(result)
    assert any("symbolic link" in finding.reason for finding in result.findings if finding.kind == CORRUPT_FILE)


def test_link_file_that_is_a_symlink_is_not_followed(tree, tmp_path):
    image = tree.image("app", "v1", seed="s")
    target = tmp_path / "link-target"
    target.write_text(image.digest)
    path = tree.tag_link("app", "v1")
    os.unlink(path)
    os.symlink(str(target), path)
    finding = only(scan_storage(tree.root), CORRUPT_FILE)
    assert "symbolic link" in finding.reason


def test_managed_directory_symlink_is_not_followed(tree, tmp_path):
    tree.image("app", "v1", seed="s")
    revisions = os.path.join(tree.repo_dir("app"), "_manifests", "revisions")
    moved = tmp_path / "revisions"
    os.rename(revisions, moved)
    os.symlink(str(moved), revisions)
    result = scan_storage(tree.root)
    assert CORRUPT_FILE in kinds(result) and DANGLING_TAG in kinds(result)
    assert result.revisions == 0


@pytest.mark.parametrize("where", ["revision_link", "blob_data", "tag_link"])
def test_directory_where_a_file_is_expected(tree, where):
    image = tree.image("app", "v1", seed="d")
    path = {
        "revision_link": tree.revision_link("app", image.digest),
        "blob_data": tree.blob_data(image.digest),
        "tag_link": tree.tag_link("app", "v1"),
    }[where]
    os.unlink(path)
    os.makedirs(os.path.join(path, "inner"))
    result = scan_storage(tree.root)
    corrupt = [finding for finding in result.findings if finding.kind == CORRUPT_FILE]
    assert len(corrupt) == 1
    assert "directory where a file is expected" in corrupt[0].reason


@pytest.mark.parametrize("where", ["tag_link", "blob_data"])
def test_fifo_is_reported_without_blocking(tree, where):
    image = tree.image("app", "v1", seed="f")
    path = tree.tag_link("app", "v1") if where == "tag_link" else tree.blob_data(image.digest)
    os.unlink(path)
    os.mkfifo(path)
    result = scan_storage(tree.root)
    corrupt = [finding for finding in result.findings if finding.kind == CORRUPT_FILE]
    assert len(corrupt) == 1 and "FIFO" in corrupt[0].reason


def test_permission_denied_is_a_finding(tree, monkeypatch):
    # Tests run as root, so unreadability is simulated at the system call.
    image = tree.image("app", "v1", seed="p")
    denied = tree.revision_link("app", image.digest)
    real_open = os.open

    def deny(path, *args, **kwargs):
        if path == denied:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(scan_module.os, "open", deny)
    result = scan_storage(tree.root)
    corrupt = only(result, CORRUPT_FILE)
    assert "permission denied" in corrupt.reason
    assert DANGLING_TAG in kinds(result)


def test_oversized_link_is_corrupt_and_not_read_whole(tree):
    image = tree.image("app", "v1", seed="o")
    tree.write_file(tree.tag_link("app", "v1"), image.digest.encode() * 100)
    finding = only(scan_storage(tree.root), CORRUPT_FILE)
    assert "larger than" in finding.reason


# -- concurrent writers and collectors -------------------------------------------------------------
def _vanish_on_read(monkeypatch, trigger: str, action):
    """Run action (delete, write) right before the scanner's first read of trigger."""
    real = StorageReader.open_bytes
    fired = []

    def patched(self, path, limit, valid=None):
        if path == trigger and not fired:
            fired.append(path)
            action()
        return real(self, path, limit, valid)

    monkeypatch.setattr(StorageReader, "open_bytes", patched)
    return fired


def test_revision_deleted_by_a_collector_mid_scan_is_not_damage(tree, monkeypatch):
    image = tree.image("app", None, seed="gc")
    tree.image("app", "keep", seed="keep")

    def collect():
        tree.remove_revision("app", image.digest)
        tree.remove_blob(image.digest)

    fired = _vanish_on_read(monkeypatch, tree.revision_link("app", image.digest), collect)
    result = scan_storage(tree.root)
    assert fired and result.findings == []


def test_manifest_data_deleted_after_its_link_was_read_is_rechecked(tree, monkeypatch):
    image = tree.image("app", None, seed="gc")

    def collect_data_then_link():
        # A collector that removes the data first, then the revision (the link is read already).
        tree.remove_blob(image.digest)

    real = StorageReader.open_bytes

    def patched(self, path, limit, valid=None):
        if path == tree.blob_data(image.digest) and os.path.exists(path):
            collect_data_then_link()
            tree.remove_revision("app", image.digest)
        return real(self, path, limit, valid)

    monkeypatch.setattr(StorageReader, "open_bytes", patched)
    result = scan_storage(tree.root)
    assert result.findings == []
    assert result.dropped_on_recheck == 1


def test_layer_deleted_for_good_mid_scan_is_reported(tree, monkeypatch):
    image = tree.image("app", "v1", seed="gc")
    _vanish_on_read(monkeypatch, tree.revision_link("app", image.digest), lambda: tree.remove_blob(image.layers[0]))
    result = scan_storage(tree.root)
    assert kinds(result) == [BROKEN_MANIFEST, ORPHAN_LAYER_LINK]


def test_link_caught_mid_write_is_not_corruption(tree, monkeypatch):
    image = tree.image("app", "v1", seed="w")
    path = tree.tag_link("app", "v1")
    real = StorageReader.open_bytes
    calls = []

    def half_written(self, target, limit, valid=None):
        if target == path and not calls:
            calls.append(target)
            return b""  # the filesystem driver truncates before it writes
        return real(self, target, limit, valid)

    monkeypatch.setattr(StorageReader, "open_bytes", half_written)
    result = scan_storage(tree.root)
    assert calls and result.findings == []
    assert result.dropped_on_recheck == 1
    assert image.digest


def test_whole_repository_vanishing_mid_scan_is_not_a_crash(tree, monkeypatch):
    import shutil

    tree.image("gone", "v1", seed="g")
    tree.image("stays", "v1", seed="s")
    trigger = os.path.join(tree.repo_dir("gone"), "_layers")

    real = scan_module._directory_problem
    fired = []

    def patched(path):
        if path == trigger and not fired:
            fired.append(path)
            shutil.rmtree(tree.repo_dir("gone"))
        return real(path)

    monkeypatch.setattr(scan_module, "_directory_problem", patched)
    result = scan_storage(tree.root)
    assert fired and result.findings == []


def test_min_age_keeps_recent_objects_out_and_reports_old_ones(tree):
    image = tree.image("app", None, seed="young")
    tree.remove_blob(image.digest)
    recent = scan_storage(tree.root, min_age=3600)
    assert recent.findings == [] and recent.skipped_recent == 1
    old = time.time() - 7200
    os.utime(tree.revision_link("app", image.digest), (old, old))
    assert kinds(scan_storage(tree.root, min_age=3600)) == [DANGLING_REVISION]
    assert kinds(scan_storage(tree.root)) == [DANGLING_REVISION]


def test_repository_patterns_select_repositories(tree):
    oci, docker = healthy(tree)
    tree.remove_revision("infra-ci", oci.children[0].digest)
    tree.remove_revision("team/app/api", docker.children[0].digest)
    assert [f.repository for f in scan_storage(tree.root, repositories=["team/*"]).findings] == ["team/app/api"]
    assert scan_storage(tree.root, repositories=["team/app"]).findings == []
    assert len(scan_storage(tree.root, repositories=["infra-ci", "team/app/api"]).findings) == 2


def test_report_lists_every_field_flat(tree):
    oci = healthy(tree)[0]
    tree.remove_revision("infra-ci", oci.children[0].digest)
    report = scan_storage(tree.root).as_report()
    json.dumps(report)
    finding = report["findings"][0]
    assert set(finding) >= {"kind", "repository", "digest", "media_type", "missing", "tags", "path", "message"}
    assert report["summary"][ORPHAN_INDEX] == 1
    assert report["broken_tags"] == ["infra-ci:latest"]
    assert finding["message"].startswith(f"infra-ci@{oci.digest}: index child manifests missing: ")


def test_each_finding_kind_has_a_stable_greppable_line(tree):
    oci, docker = healthy(tree)
    tree.remove_revision("infra-ci", oci.children[0].digest)
    tree.remove_blob(docker.children[1].config)
    lonely = tree.image("solo", "t", seed="solo")
    tree.remove_blob(lonely.digest)
    tree.write_file(tree.layer_link("solo", lonely.layers[0]), b"junk")
    pattern = re.compile(
        r"^(ORPHAN INDEX|BROKEN MANIFEST|DANGLING REVISION|DANGLING TAG|ORPHAN LAYER LINK|CORRUPT FILE)"
        r"( [a-z_]+=\S+)+( reason=.*)?$"
    )
    result = scan_storage(tree.root)
    assert {finding.kind for finding in result.findings} == {
        ORPHAN_INDEX, BROKEN_MANIFEST, ORPHAN_LAYER_LINK, DANGLING_REVISION, DANGLING_TAG, CORRUPT_FILE
    }
    for finding in result.findings:
        assert pattern.match(finding.log_line()), finding.log_line()
    assert re.match(r"^SUMMARY clean=no repositories=4 ", result.summary_line())


def test_is_digest_is_strict():
    good = "sha256:" + "a" * 64
    assert is_digest(good)
    for bad in (good + "\n", good.upper(), "sha256:" + "g" * 64, "sha512:" + "a" * 64, good[:-1], ""):
        assert not is_digest(bad)


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_json_the_parser_cannot_handle_is_a_corrupt_manifest_not_a_crash(tree, monkeypatch, error):
    image = tree.image("app", "v1", seed="deep")

    def refuse(_body):
        raise error("from the parser")

    monkeypatch.setattr(scan_module.json, "loads", refuse)
    result = scan_storage(tree.root)
    assert [(f.kind, f.digest, f.tags) for f in result.findings] == [(CORRUPT_FILE, image.digest, ("v1",))]
    assert "JSON is" in result.findings[0].reason


def test_deeply_nested_manifest_is_a_corrupt_file(tree):
    body = b'{"schemaVersion":2,"x":' + b"[" * 100000 + b"]" * 100000 + b"}"
    digest = tree.blob(body)
    tree.link_revision("app", digest)
    tree.tag("app", "deep", digest)
    result = scan_storage(tree.root)
    assert [(f.kind, f.digest, f.tags) for f in result.findings] == [(CORRUPT_FILE, digest, ("deep",))]
    assert result.findings[0].reason == "manifest data JSON is nested too deeply to parse (not a usable manifest)"


# -- the host-wide maintenance lock ------------------------------------------------------------------


def test_host_lock_refuses_a_second_run_in_one_sentence_naming_the_holder(tmp_path):
    path = str(tmp_path / "tools.lock")
    with scan_module.host_lock("guarded garbage collection", path):
        with pytest.raises(scan_module.HostLockError) as raised:
            with scan_module.host_lock("storage scan", path, wait=0):
                raise AssertionError("two runs held the lock at once")
    assert str(raised.value) == (
        f"another registry maintenance run (pid {os.getpid()} guarded garbage collection) holds lock file {path}; "
        "waited 0 seconds, so this storage scan did not start"
    )
    # Released with the block: the next run takes it at once.
    with scan_module.host_lock("storage scan", path, wait=0):
        pass


def test_host_lock_waits_for_the_holder_to_finish(tmp_path, monkeypatch):
    import contextlib

    path = str(tmp_path / "tools.lock")
    holder = contextlib.ExitStack()
    holder.enter_context(scan_module.host_lock("tag retention", path))
    waited = []

    def sleep(seconds):
        # The second run is waiting now: the first one finishes.
        waited.append(seconds)
        holder.close()

    monkeypatch.setattr(scan_module.time, "sleep", sleep)
    with scan_module.host_lock("storage scan", path, wait=3600):
        pass
    assert len(waited) == 1


def test_host_lock_path_comes_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "from-env.lock"
    monkeypatch.setenv(scan_module.LOCK_FILE_ENV, str(path))
    with scan_module.host_lock("storage scan") as used:
        assert used == str(path)
        assert path.read_text() == f"pid {os.getpid()} storage scan\n"


def test_unusable_lock_file_is_one_sentence(tmp_path):
    with pytest.raises(scan_module.HostLockError, match=r"^lock file .*/missing/x.lock cannot be opened \(No such file"):
        with scan_module.host_lock("storage scan", str(tmp_path / "missing" / "x.lock")):
            pass

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore's rules on storage trees written the registry's way: what it places, and what it never does."""

from __future__ import annotations

import os
import shutil
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._gc_guard import CommandResult
from ansible_collections.selfhosted.registry.plugins.module_utils._restore import (
    RestoreError,
    RestoreOptions,
    run_restore,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._restore_sources import SourceMiss, StorageSource
from tests.unit.plugins.module_utils.storage_tree import Index, StorageTree, tree_listing


class Incident(t.NamedTuple):
    backup: StorageTree
    target: StorageTree
    index: Index


def _incident(tmp_path) -> Incident:
    """A backup with infra-ci:latest whole, and the registry's storage after `gc -m`: child links and blobs gone."""
    backup = StorageTree(str(tmp_path / "backup"))
    children = [backup.image("infra-ci", seed=f"child{number}", link_revision=True) for number in range(2)]
    index = backup.index("infra-ci", "latest", children)
    shutil.copytree(backup.root, tmp_path / "registry", symlinks=True)
    target = StorageTree(str(tmp_path / "registry"))
    for child in children:
        shutil.rmtree(os.path.dirname(target.revision_link("infra-ci", child.digest)))
        for blob in (child.config,) + child.layers:
            shutil.rmtree(target.blob_dir(blob))
    return Incident(backup, target, index)


def _contents(root: str) -> t.Dict[str, bytes]:
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                found[os.path.relpath(os.path.join(directory, name), root)] = handle.read()
    return found


class Runner:
    def __init__(self, fail: str = "") -> None:
        self.calls: t.List[t.List[str]] = []
        self.fail = fail

    def __call__(self, argv: t.Sequence[str], timeout: float) -> CommandResult:
        self.calls.append(list(argv))
        if argv[0] == self.fail:
            return CommandResult(1, "", "registry did not stop\n")
        return CommandResult(0, "", "")


def _options(incident: Incident, **overrides: t.Any) -> RestoreOptions:
    values: t.Dict[str, t.Any] = dict(storage_root=incident.target.root, images=("infra-ci:latest",),
                                      before_command=("stop",), after_command=("start",))
    values.update(overrides)
    return RestoreOptions(**values)


def test_check_mode_reads_and_plans_but_writes_and_runs_nothing(tmp_path):
    incident = _incident(tmp_path)
    before = tree_listing(incident.target.root)
    runner = Runner()
    outcome = run_restore(_options(incident, check_mode=True), [StorageSource(incident.backup.root)], runner)
    assert tree_listing(incident.target.root) == before
    assert runner.calls == [] and outcome.changed  # would change
    assert outcome.summary()["would_link"] == 2 and outcome.summary()["would_restore"] == 6
    assert "blobs/sha256/" in outcome.diff()["after"]


def test_places_blobs_then_links_with_the_registry_stopped_and_keeps_the_tag(tmp_path):
    incident = _incident(tmp_path)
    tag_link = incident.target.tag_link("infra-ci", "latest")
    with open(tag_link, "rb") as handle:
        tag_before = handle.read()
    runner = Runner()
    outcome = run_restore(_options(incident), [StorageSource(incident.backup.root)], runner)
    assert runner.calls == [["stop"], ["start"]]
    assert [image.status for image in outcome.images] == ["restored"], outcome.lines()
    manifests = [item for item in outcome.objects if item.kind == "manifest"]
    assert len(manifests) == 2 and all(len(item.requires) == 3 for item in manifests)
    for item in manifests:  # each child's config and layers are placed before the child itself
        assert all(outcome.objects.index(below) < outcome.objects.index(item) for below in item.requires)
    assert _contents(incident.target.root) == _contents(incident.backup.root)
    with open(tag_link, "rb") as handle:
        assert handle.read() == tag_before
    again = run_restore(_options(incident), [StorageSource(incident.backup.root)], runner)
    assert not again.changed and runner.calls == [["stop"], ["start"]]  # nothing missing: no command runs


def test_refuses_to_place_while_the_registry_may_be_writing(tmp_path):
    incident = _incident(tmp_path)
    before = tree_listing(incident.target.root)
    outcome = run_restore(_options(incident, before_command=(), after_command=()), [StorageSource(incident.backup.root)])
    assert outcome.failed.startswith("refused to restore: no before command")
    assert tree_listing(incident.target.root) == before


def test_a_failing_before_command_places_nothing_and_still_runs_the_after_command(tmp_path):
    incident = _incident(tmp_path)
    before = tree_listing(incident.target.root)
    runner = Runner(fail="stop")
    outcome = run_restore(_options(incident), [StorageSource(incident.backup.root)], runner)
    assert outcome.failed == "the before command exited with status 1: registry did not stop"
    assert runner.calls == [["stop"], ["start"]]
    assert tree_listing(incident.target.root) == before


class Truncating:
    name = "truncating mirror"

    def __init__(self, inner: StorageSource) -> None:
        self.inner = inner

    def stream(self, kind: str, repository: str, digest: str, sink: t.Callable[[bytes], None]) -> int:
        chunks: t.List[bytes] = []
        self.inner.stream(kind, repository, digest, chunks.append)
        body = b"".join(chunks)[:-1]
        sink(body)
        return len(body)


class Empty:
    name = "empty mirror"

    def stream(self, kind: str, repository: str, digest: str, sink: t.Callable[[bytes], None]) -> int:
        raise SourceMiss(f"{self.name} answered 404 for {kind} {digest}")


def test_bad_bytes_are_refused_and_taken_from_the_next_source(tmp_path):
    incident = _incident(tmp_path)
    good = StorageSource(incident.backup.root)
    outcome = run_restore(_options(incident, registry_offline=True, before_command=(), after_command=()),
                          [Empty(), Truncating(good), good])
    restored = [item for item in outcome.objects if item.action == "restored"]
    assert len(restored) == 6
    for item in restored:
        assert item.source == good.name
        assert item.problems[0].startswith("empty mirror answered 404")
        assert "truncating mirror: its" in item.problems[1] and "(altered or truncated), not used" in item.problems[1]
    assert not [name for name in os.listdir(incident.target.v2) if "restore" in name]


def test_an_object_no_source_has_keeps_its_manifest_unlinked_and_lists_the_image(tmp_path):
    incident = _incident(tmp_path)
    lost = incident.index.children[1].layers[0]
    shutil.rmtree(incident.backup.blob_dir(lost))
    outcome = run_restore(_options(incident), [StorageSource(incident.backup.root)], Runner())
    assert outcome.rebuild == ["infra-ci:latest"]
    by_digest = {item.digest: item for item in outcome.objects}
    assert by_digest[lost].action == "unavailable"
    assert by_digest[lost].problems == [f"backup {incident.backup.root} has no blob {lost}"]
    second = by_digest[incident.index.children[1].digest]
    assert second.action == "not_placed" and f"the layer {lost}" in second.problems[0]
    assert not os.path.exists(incident.target.revision_link("infra-ci", second.digest))
    assert by_digest[incident.index.children[0].digest].action == "linked"


def test_a_symlink_in_the_way_is_never_followed_or_replaced(tmp_path):
    incident = _incident(tmp_path)
    layer = incident.index.children[0].layers[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    # In the blob store the plan sees it already; in a repository only the placing does.
    prefix = os.path.dirname(incident.target.blob_dir(layer))
    shutil.rmtree(prefix, ignore_errors=True)
    os.symlink(outside, prefix)
    layers_dir = os.path.join(incident.target.repo_dir("infra-ci"), "_layers", "sha256")
    shutil.rmtree(layers_dir)
    os.symlink(outside, layers_dir)
    outcome = run_restore(_options(incident), [StorageSource(incident.backup.root)], Runner())
    by_digest = {item.digest: item for item in outcome.objects}
    assert by_digest[layer].action == "unavailable"
    assert by_digest[layer].problems == [
        f"the registry's own copy: blobs/sha256/{layer[7:9]} is a symbolic link (not followed); it is not overwritten"]
    config = by_digest[incident.index.children[1].config]
    assert config.action == "not_placed"
    assert config.problems == ["repositories/infra-ci/_layers/sha256 is a symbolic link, so nothing is written there"]
    assert os.listdir(outside) == []
    assert outcome.rebuild == ["infra-ci:latest"]


def test_an_existing_link_with_other_content_is_not_overwritten(tmp_path):
    incident = _incident(tmp_path)
    child = incident.index.children[0].digest
    link = incident.target.revision_link("infra-ci", child)
    incident.target.write_file(link, "sha256:" + "0" * 64)
    outcome = run_restore(_options(incident), [StorageSource(incident.backup.root)], Runner())
    item = next(item for item in outcome.objects if item.digest == child)
    assert item.action == "not_placed" and "it is not overwritten" in item.problems[0]
    with open(link, encoding="ascii") as handle:
        assert handle.read() == "sha256:" + "0" * 64


def test_a_bad_reference_is_one_sentence(tmp_path):
    incident = _incident(tmp_path)
    with pytest.raises(RestoreError, match="invalid tag"):
        run_restore(_options(incident, images=("infra-ci:bad tag",)), [])


def test_a_missing_tag_is_not_found_and_never_handed_to_a_rebuild(tmp_path):
    incident = _incident(tmp_path)
    outcome = run_restore(_options(incident, images=("infra-ci:gone",)), [], Runner())
    assert outcome.rebuild == []
    assert [image.status for image in outcome.images] == ["not_found"]
    assert outcome.images[0].message == "the storage has no tag gone; check the name"


def test_a_symlinked_repository_is_never_followed_to_a_tag(tmp_path):
    incident = _incident(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(incident.target.repo_dir("infra-ci"), elsewhere)
    os.symlink(elsewhere, incident.target.repo_dir("infra-ci"))
    outcome = run_restore(_options(incident), [StorageSource(incident.backup.root)], Runner())
    assert [image.status for image in outcome.images] == ["not_found"] and outcome.rebuild == []
    assert outcome.images[0].message == "repositories/infra-ci is a symbolic link (not followed)"
    assert outcome.objects == []

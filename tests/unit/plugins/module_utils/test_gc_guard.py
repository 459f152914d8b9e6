# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GC guard's parsing, classification and reachability, fed by the real garbage collector.

Storage trees are written file by file; the collector that reads them is the real
``docker-registry garbage-collect`` (it needs no running registry).
"""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._gc_guard import (
    CommandResult,
    GCGuardError,
    GCOptions,
    classify_failure,
    configured_rootdirectory,
    find_blockers,
    parse_gc_output,
    run_command,
    run_guarded_gc,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import StorageReader
from tests.unit.plugins.module_utils.storage_tree import StorageTree

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@pytest.fixture
def tree(tmp_path):
    return StorageTree(str(tmp_path / "storage"))


def write_config(tmp_path, root, name: str = "config.yml") -> str:
    path = tmp_path / name
    path.write_text(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n" % root
    )
    return str(path)


def dry_run(config: str, delete_untagged: bool) -> CommandResult:
    argv = [REGISTRY_BINARY, "garbage-collect", "--dry-run"] + (["--delete-untagged"] if delete_untagged else [])
    return run_command(argv + [config], 120)


def test_parses_the_real_collectors_dry_run_with_nested_repositories(tree, tmp_path):
    index = tree.multiarch("team/app/api", "v1", fmt="docker", seed="n")
    tree.image("plain", "1.0", seed="p")
    untagged = tree.image("plain", None, seed="u")
    result = dry_run(write_config(tmp_path, tree.root), delete_untagged=True)
    assert result.returncode == 0, result.stderr
    parsed = parse_gc_output(result.stdout)
    assert set(parsed.repositories) == {"team/app/api", "plain"}
    assert set(parsed.eligible_manifests) == {("plain", untagged.digest)} | {
        ("team/app/api", child.digest) for child in index.children
    }
    assert untagged.digest in parsed.eligible_blobs
    assert parsed.summary is not None and parsed.summary[1] == len(parsed.eligible_blobs)


def test_plain_dry_run_lists_only_unreferenced_blobs(tree, tmp_path):
    tree.multiarch("infra-ci", "latest", seed="x")
    stray = tree.blob(b"uploaded, never referenced")
    tree.link_layer("infra-ci", stray)
    parsed = parse_gc_output(dry_run(write_config(tmp_path, tree.root), delete_untagged=False).stdout)
    assert parsed.eligible_manifests == ()
    assert parsed.eligible_blobs == (stray,)


def test_parses_the_3x_line_forms():
    digest = "sha256:" + "c" * 64
    text = (
        "infra-ci\n"
        f"manifest eligible for deletion: {{team/app {digest} [latest v1]}}\n"
        f"infra-ci: layer link eligible for deletion: {digest}\n"
        f"blob eligible for deletion: {digest}\n"
    )
    parsed = parse_gc_output(text)
    assert parsed.eligible_manifests == (("team/app", digest),)
    assert parsed.eligible_layer_links == (("infra-ci", digest),)
    assert parsed.eligible_blobs == (digest,)


def test_lines_that_are_not_digests_are_ignored():
    parsed = parse_gc_output("blob eligible for deletion: sha256:../../etc\nmanifest eligible for deletion: x\n")
    assert parsed.eligible_blobs == () and parsed.eligible_manifests == ()


# -- exit status 1 has several causes --------------------------------------------------------------
def test_classifies_an_empty_store(tmp_path):
    (tmp_path / "empty").mkdir()
    result = dry_run(write_config(tmp_path, tmp_path / "empty"), delete_untagged=False)
    assert result.returncode == 1
    assert classify_failure(result).kind == "empty_store"


def test_classifies_a_missing_and_a_broken_configuration(tmp_path):
    missing = dry_run(str(tmp_path / "nope.yml"), delete_untagged=False)
    assert classify_failure(missing).kind == "configuration"
    (tmp_path / "bad.yml").write_text("storage: [\n")
    broken = dry_run(str(tmp_path / "bad.yml"), delete_untagged=False)
    failure = classify_failure(broken)
    assert failure.kind == "configuration" and "bad.yml" in failure.message


def test_classifies_a_repository_without_tags_directory(tree, tmp_path):
    tree.image("tagged", "v1", seed="t")
    tree.image("digest-only", None, seed="d")
    result = dry_run(write_config(tmp_path, tree.root), delete_untagged=True)
    assert result.returncode == 1
    failure = classify_failure(result)
    assert failure.kind == "missing_tags_directory" and "digest-only" in failure.message


@pytest.mark.parametrize("damage", ["truncated_manifest", "empty_revision_link", "corrupt_tag_link"])
def test_classifies_damage(tree, tmp_path, damage):
    image = tree.image("app", "v1", seed="d")
    tree.image("app", None, seed="u")
    if damage == "truncated_manifest":
        with open(tree.blob_data(image.digest), "r+b") as handle:
            handle.truncate(15)
    elif damage == "empty_revision_link":
        tree.write_file(tree.revision_link("app", image.digest), b"")
    else:
        tree.write_file(tree.tag_link("app", "v1"), b"garbage")
    result = dry_run(write_config(tmp_path, tree.root), delete_untagged=damage == "corrupt_tag_link")
    assert result.returncode == 1
    assert classify_failure(result).kind == "damaged_storage"


def test_unknown_failure_keeps_the_collectors_last_line():
    failure = classify_failure(CommandResult(1, "", "something new went wrong\n"))
    assert failure.kind == "unknown" and "something new went wrong" in failure.message


# -- reachability ----------------------------------------------------------------------------------
def test_blockers_name_tag_digest_and_role(tree):
    index = tree.multiarch("infra-ci", "latest", seed="b")
    child = index.children[0]
    blockers = find_blockers(
        StorageReader(tree.root), [("infra-ci", child.digest)], [child.config, "sha256:" + "0" * 64]
    )
    assert [(b.kind, b.digest, b.tags, b.role) for b in blockers] == [
        ("blob", child.config, ("latest",), "config or layer"),
        ("manifest", child.digest, ("latest",), "child manifest"),
    ]
    assert "reachable from infra-ci:latest" in blockers[1].message


def test_reachability_follows_content_even_without_the_childs_revision_link(tree):
    index = tree.multiarch("infra-ci", "latest", seed="c")
    child = index.children[1]
    tree.remove_revision("infra-ci", child.digest)
    blockers = find_blockers(StorageReader(tree.root), [], child.layers)
    assert {b.digest for b in blockers} == set(child.layers)


def test_untagged_and_history_only_content_does_not_block(tree):
    old = tree.multiarch("app", "latest", seed="old")
    tree.multiarch("app", "latest", seed="new")
    lone = tree.image("app", None, seed="lone")
    eligible = [("app", old.digest), ("app", lone.digest)] + [("app", c.digest) for c in old.children]
    assert find_blockers(StorageReader(tree.root), eligible, [lone.config]) == []


def test_same_digest_in_another_repository_is_not_confused(tree):
    shared = tree.image("one", "v1", seed="same")
    tree.image("two", None, seed="x")
    blockers = find_blockers(StorageReader(tree.root), [("two", shared.digest)], [])
    assert blockers == []


# -- the whole run ---------------------------------------------------------------------------------
def guarded(tree, tmp_path, **overrides):
    # No registry serves these trees, so it is offline for the whole run.
    values = dict(
        storage_root=tree.root,
        config_path=write_config(tmp_path, tree.root),
        gc_command=(REGISTRY_BINARY,),
        registry_offline=True,
    )
    values.update(overrides)
    return run_guarded_gc(GCOptions(**values))


def test_refusal_runs_no_collection_and_changes_nothing(tree, tmp_path):
    tree.multiarch("infra-ci", "latest", seed="r")
    before = tree.listing()
    outcome = guarded(tree, tmp_path, delete_untagged=True)
    assert outcome.status == "refused" and outcome.exit_code == 1
    assert len(outcome.commands) == 1 and "--dry-run" in outcome.commands[0]
    assert tree.listing() == before
    assert outcome.diff()["before"] == ""


def test_delete_untagged_goes_through_when_nothing_tagged_is_hit(tree, tmp_path):
    tree.image("infra-ci", "latest", seed="ok")
    lone = tree.image("infra-ci", None, seed="lone")
    check = guarded(tree, tmp_path, delete_untagged=True, check_mode=True)
    assert check.status == "would_collect"
    assert f"manifest infra-ci@{lone.digest}\n" in check.diff()["before"]
    outcome = guarded(tree, tmp_path, delete_untagged=True)
    assert outcome.status == "collected", outcome.message
    assert outcome.deleted_manifests == [("infra-ci", lone.digest)]
    assert set(outcome.deleted_blobs) >= {lone.config, *lone.layers}
    assert outcome.reclaimed_bytes > 0
    assert outcome.scan_after["clean"] is True
    assert outcome.changed
    assert "registry_gc_deleted_manifests 1" in "\n".join(
        f"{m.name} {m.value:g}" for m in outcome.metrics()
    )


def test_failing_before_command_stops_everything_but_after_still_runs(tree, tmp_path):
    tree.image("app", "v1", seed="h")
    journal = tmp_path / "journal"
    outcome = guarded(
        tree,
        tmp_path,
        before_command=("sh", "-c", f"echo before >> {journal}; echo cannot stop it >&2; exit 3"),
        after_command=("sh", "-c", f"echo after >> {journal}"),
    )
    assert outcome.status == "error" and outcome.failure_kind == "hook"
    assert "the before command exited with status 3: cannot stop it" == outcome.message
    assert journal.read_text().splitlines() == ["before", "after"]
    assert not any("garbage-collect" in command for command in outcome.commands)


def test_check_mode_runs_no_hook(tree, tmp_path):
    tree.image("app", "v1", seed="c")
    journal = tmp_path / "journal"
    outcome = guarded(
        tree,
        tmp_path,
        check_mode=True,
        before_command=("sh", "-c", f"echo before >> {journal}"),
        after_command=("sh", "-c", f"echo after >> {journal}"),
    )
    assert outcome.status == "nothing_to_collect"
    assert not journal.exists()


def test_missing_program_and_timeout_are_one_sentence(tree, tmp_path):
    tree.image("app", "v1", seed="m")
    missing = guarded(tree, tmp_path, gc_command=("/nonexistent/registry",))
    assert missing.status == "error" and missing.message == "command /nonexistent/registry was not found"
    slow = guarded(tree, tmp_path, gc_command=("sh", "-c", "sleep 30", "x"), timeout=0.5)
    assert slow.status == "error" and "did not finish within 0.5 seconds" in slow.message


def test_unusable_options_raise_the_guard_error(tmp_path):
    with pytest.raises(GCGuardError, match="does not exist"):
        run_guarded_gc(GCOptions(storage_root=str(tmp_path / "nope"), config_path="c.yml"))
    with pytest.raises(GCGuardError, match="configuration path"):
        run_guarded_gc(GCOptions(storage_root=str(tmp_path), config_path=""))


def test_collector_reading_other_storage_is_caught(tree, tmp_path):
    tree.image("here", "v1", seed="h")
    other = StorageTree(str(tmp_path / "other"))
    other.image("there", "v1", seed="t")
    outcome = guarded(tree, tmp_path, config_path=write_config(tmp_path, other.root, "other.yml"))
    assert outcome.status == "error" and outcome.failure_kind == "storage_mismatch"
    assert f"names rootdirectory {other.root}" in outcome.message and os.path.isdir(other.repo_dir("there"))
    assert outcome.commands == []
    # A configuration whose real path is the same storage passes, whichever spelling it uses.
    os.symlink(tree.root, str(tmp_path / "alias"))
    same = guarded(tree, tmp_path, config_path=write_config(tmp_path, str(tmp_path / "alias"), "alias.yml"))
    assert same.failure_kind == "", same.message


def test_dry_run_walk_of_other_storage_is_caught(tree, tmp_path):
    tree.image("here", "v1", seed="h")
    other = StorageTree(str(tmp_path / "other"))
    other.image("there", "v1", seed="t")
    outcome = guarded(
        tree,
        tmp_path,
        config_path=write_config(tmp_path, other.root, "other.yml"),
        config_on_host=write_config(tmp_path, "/var/lib/registry", "host-view.yml"),
        storage_root_in_config="/var/lib/registry",
    )
    assert outcome.status == "error" and outcome.failure_kind == "storage_mismatch"
    assert "repository there" in outcome.message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/a # data\n", "/srv/a"),
        ("storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: '/srv/b c'\n", "/srv/b c"),
        ("storage:\n  filesystem:\n    maxthreads: 100\nhttp:\n  rootdirectory: /not/this\n", "/var/lib/registry"),
        ('"storage":\n    "filesystem":\n        "rootdirectory": "/srv/c"\n', "/srv/c"),
    ],
)
def test_configured_rootdirectory(text, expected):
    assert configured_rootdirectory(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("storage:\n  s3:\n    bucket: x\n", "no filesystem storage"),
        ("storage:\n  filesystem: {rootdirectory: /x}\n", "not written as a block mapping"),
        ("storage:\n  filesystem:\n    rootdirectory:\n", "is empty"),
    ],
)
def test_configurations_the_guard_cannot_follow_are_refused(text, reason):
    with pytest.raises(ValueError, match=reason):
        configured_rootdirectory(text)


def test_deletions_the_dry_run_did_not_list_are_caught_by_storage_evidence(tree, tmp_path):
    # A collector run that also removes a tagged image's layer (as a push racing a writable registry
    # would end): the guard counts blob directories before and after, and the scan afterwards names the
    # damage that involves what disappeared.
    kept = tree.image("app", "v1", seed="kept")
    lone = tree.image("app", None, seed="lone")
    victim = tree.blob_dir(kept.layers[0])
    wrapper = f'case " $* " in *" --dry-run "*) ;; *) rm -rf {victim};; esac; exec {REGISTRY_BINARY} "$@"'
    outcome = guarded(tree, tmp_path, delete_untagged=True, gc_command=("sh", "-c", wrapper, "gc"))
    assert outcome.status == "collected"
    assert outcome.deleted_manifests == [("app", lone.digest)]
    assert any("deleted 1 blob(s) its dry run did not list" in warning for warning in outcome.warnings)
    assert outcome.scan_after["clean"] is False
    assert outcome.scan_after["broken_tags"] == ["app:v1"]
    # The layer was not among the deleted digests the guard saw, so it is other damage, not new.
    assert outcome.scan_after["other_damage"] >= 1


def test_plain_gc_is_refused_when_it_would_sweep_what_a_dangling_tag_still_names(tree, tmp_path):
    # A tag whose revision link is gone: plain GC no longer marks its manifest, config or layers. The
    # tag already answers 404, but the data is what a repair (re-linking the revision) needs.
    image = tree.image("app", "v1", seed="dangling")
    tree.remove_revision("app", image.digest)
    before = tree.listing()
    outcome = guarded(tree, tmp_path)
    assert outcome.status == "refused"
    roles = {(blocker.digest, blocker.role) for blocker in outcome.blockers}
    assert (image.digest, "tagged manifest") in roles
    assert {(digest, "config or layer") for digest in (image.config, *image.layers)} <= roles
    assert tree.listing() == before

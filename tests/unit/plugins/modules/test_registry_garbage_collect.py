# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""registry_garbage_collect in-process over storage trees, with the real ``docker-registry`` collector."""

from __future__ import annotations

import json
import shutil
import types
import typing as t

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.registry.plugins.modules import registry_garbage_collect
from tests.unit.plugins.module_utils.storage_tree import StorageTree

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def run_module(args, capsys, check: bool = False, diff: bool = False) -> t.Tuple[int, t.Dict[str, t.Any]]:
    with patch_module_args(dict(args, _ansible_check_mode=check, _ansible_diff=diff)), pytest.raises(
        SystemExit
    ) as exited:
        registry_garbage_collect.main()
    return int(exited.value.code or 0), json.loads(capsys.readouterr().out)


@pytest.fixture
def store(tmp_path):
    tree = StorageTree(str(tmp_path / "storage"))
    index = tree.multiarch("infra-ci", "latest", seed="g")
    stray = tree.blob(b"a layer no manifest references")
    tree.link_layer("infra-ci", stray)
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tree.root}\n  delete:\n    enabled: true\n"
    )
    # No registry serves the tree: it is offline for the whole run.
    args = {"storage_root": tree.root, "config_path": str(config), "gc_command": [REGISTRY_BINARY],
            "registry_offline": True}
    return types.SimpleNamespace(tree=tree, index=index, stray=stray, args=args)


def test_refusal_fails_names_tag_and_digest_and_deletes_nothing(store, capsys):
    tree, index, args = store.tree, store.index, store.args
    before = tree.listing()
    code, result = run_module(dict(args, delete_untagged=True), capsys, diff=True)
    assert code == 1 and result["failed"] is True and result["changed"] is False
    assert result["status"] == "refused"
    assert "reachable from infra-ci:latest" in result["msg"]
    manifests = {b["digest"] for b in result["blockers"] if b["kind"] == "manifest"}
    assert manifests == {child.digest for child in index.children}
    assert all(b["tags"] == ["latest"] for b in result["blockers"])
    assert result["diff"]["before"] == ""
    assert tree.listing() == before


def test_check_mode_reports_what_would_go_and_changes_nothing(store, capsys):
    tree, stray, args = store.tree, store.stray, store.args
    before = tree.listing()
    code, result = run_module(args, capsys, check=True, diff=True)
    assert code == 0 and result["changed"] is False
    assert result["status"] == "would_collect"
    assert result["eligible_blobs"] == [stray]
    assert result["diff"]["before"] == f"blob {stray}\n" and result["diff"]["after"] == ""
    assert tree.listing() == before


def test_real_run_changes_only_with_evidence_and_is_idempotent(store, capsys, tmp_path):
    stray, args = store.stray, store.args
    report = tmp_path / "gc.json"
    code, result = run_module(dict(args, report_path=str(report)), capsys, diff=True)
    assert code == 0 and result["changed"] is True, result
    assert result["status"] == "collected"
    assert result["deleted_blobs"] == [stray]
    assert result["reclaimed_bytes"] == len(b"a layer no manifest references")
    assert result["diff"]["before"] == f"blob {stray}\n"
    assert result["scan_after"]["clean"] is True
    assert json.loads(report.read_text())["status"] == "collected"
    # No before/after commands: the module says what the operator must do.
    assert any("restart the registry" in warning for warning in result["warnings_list"])
    assert any("restart the registry" in str(warning) for warning in result["warnings"]), result.get("warnings")

    code, again = run_module(args, capsys)
    assert code == 0 and again["changed"] is False and again["status"] == "nothing_to_collect"


def test_collector_failure_is_classified_in_one_message(store, capsys):
    tree, args = store.tree, store.args
    tree.image("digest-only", None, seed="d")
    code, result = run_module(dict(args, delete_untagged=True), capsys)
    assert code == 1 and result["failure_kind"] == "missing_tags_directory"
    assert "repository digest-only has no _manifests/tags directory" in result["msg"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"storage_root": "/nonexistent/registry"}, "storage root /nonexistent/registry does not exist"),
        ({"gc_command": ["/nonexistent/registry-binary"]}, "command /nonexistent/registry-binary was not found"),
        ({"timeout": 0}, "timeout must be positive, got 0"),
    ],
)
def test_bad_input_is_one_message(store, capsys, overrides, message):
    args = store.args
    code, result = run_module(dict(args, **overrides), capsys)
    assert code == 1 and result["msg"] == message


def test_another_run_holding_the_host_lock_fails_in_one_sentence_and_runs_nothing(store, capsys, tmp_path):
    from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import host_lock

    lock = str(tmp_path / "tools.lock")
    before = store.tree.listing()
    with host_lock("storage scan", lock):
        code, result = run_module(dict(store.args, lock_path=lock, lock_timeout=0), capsys)
    assert code == 1 and result["failed"] is True
    assert result["msg"].startswith("another registry maintenance run (pid ")
    assert result["msg"].endswith("so this guarded garbage collection did not start")
    assert store.tree.listing() == before


def test_a_writable_registry_is_refused_unless_said_offline(store, capsys):
    args = dict(store.args)
    del args["registry_offline"]
    code, result = run_module(args, capsys)
    assert code == 1 and result["failure_kind"] == "registry_writable" and result["commands"] == []

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""registry_orphan_scan in-process: its arguments, its result shape, check mode, failures as one message."""

from __future__ import annotations

import json
import typing as t

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.registry.plugins.modules import registry_orphan_scan
from tests.unit.plugins.module_utils.storage_tree import StorageTree


def run_module(args: t.Dict[str, t.Any], capsys, check: bool = False) -> t.Tuple[int, t.Dict[str, t.Any]]:
    with patch_module_args(dict(args, _ansible_check_mode=check)), pytest.raises(SystemExit) as exited:
        registry_orphan_scan.main()
    return int(exited.value.code or 0), json.loads(capsys.readouterr().out)


@pytest.fixture
def broken(tmp_path):
    tree = StorageTree(str(tmp_path / "storage"))
    index = tree.multiarch("infra-ci", "latest", seed="m")
    tree.remove_revision("infra-ci", index.children[1].digest)
    tree.image("team/app", "v1", seed="ok")
    return tree, index


@pytest.mark.parametrize("check", [False, True], ids=["run", "check_mode"])
def test_reports_the_orphan_index_read_only(broken, capsys, check):
    tree, index = broken
    before = tree.listing()
    code, result = run_module({"storage_root": tree.root}, capsys, check=check)
    assert code == 0 and result["changed"] is False
    assert result["clean"] is False
    assert result["summary"]["orphan_index"] == 1 and sum(result["summary"].values()) == 1
    assert result["broken_tags"] == ["infra-ci:latest"]
    finding = result["findings"][0]
    assert finding["kind"] == "orphan_index" and finding["digest"] == index.digest
    assert finding["missing"] == [index.children[1].digest] and finding["tags"] == ["latest"]
    assert finding["media_type"] == "application/vnd.oci.image.index.v1+json"
    assert result["log_lines"][0].startswith("ORPHAN INDEX repo=infra-ci ")
    assert result["counts"]["repositories"] == 2
    assert tree.listing() == before


def test_repositories_filter_and_clean_result(broken, capsys):
    tree = broken[0]
    code, result = run_module({"storage_root": tree.v2, "repositories": ["team/*"]}, capsys)
    assert code == 0 and result["clean"] is True and result["findings"] == []
    assert result["counts"]["repositories"] == 1


def test_fail_on_findings_fails_with_one_sentence_and_the_full_result(broken, capsys):
    tree, index = broken
    code, result = run_module({"storage_root": tree.root, "fail_on_findings": True}, capsys)
    assert code == 1 and result["failed"] is True
    assert result["msg"] == (
        f"registry storage is not clean: 1 finding(s), first: infra-ci@{index.digest}: "
        f"index child manifests missing: {index.children[1].digest}"
    )
    assert result["broken_tags"] == ["infra-ci:latest"]


def test_writes_report_and_metrics(broken, capsys, tmp_path):
    tree = broken[0]
    report, metrics = tmp_path / "scan.json", tmp_path / "scan.prom"
    code, result = run_module(
        {"storage_root": tree.root, "report_path": str(report), "metrics_path": str(metrics)}, capsys
    )
    assert code == 0
    assert json.loads(report.read_text())["findings"] == result["findings"]
    assert 'registry_storage_findings{kind="orphan_index"} 1' in metrics.read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        ({"storage_root": "/nonexistent/registry"}, "storage root /nonexistent/registry does not exist"),
        ({"storage_root": "{root}", "min_age": -1}, "min_age must not be negative, got -1"),
        ({"storage_root": "{root}", "report_path": "/nonexistent/dir/r.json"}, "cannot write "),
    ],
)
def test_bad_input_is_one_message(broken, capsys, args, message):
    tree = broken[0]
    args = {key: value.format(root=tree.root) if isinstance(value, str) else value for key, value in args.items()}
    code, result = run_module(args, capsys)
    assert code == 1 and result["msg"].startswith(message)
    assert "Traceback" not in json.dumps(result)


def test_another_run_holding_the_host_lock_fails_and_still_writes_report_and_metrics(broken, capsys, tmp_path):
    from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import host_lock

    tree = broken[0]
    lock, report, metrics = str(tmp_path / "tools.lock"), tmp_path / "scan.json", tmp_path / "scan.prom"
    with host_lock("guarded garbage collection", lock):
        code, result = run_module(
            {"storage_root": tree.root, "lock_path": lock, "lock_timeout": 0, "report_path": str(report),
             "metrics_path": str(metrics)},
            capsys,
        )
    assert code == 1 and result["failed"] is True
    assert "holds lock file" in result["msg"] and result["msg"].endswith("so this storage scan did not start")
    assert json.loads(report.read_text())["failed"] is True
    assert "registry_storage_scan_failed 1" in metrics.read_text()

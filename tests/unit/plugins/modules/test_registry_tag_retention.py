# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry_tag_retention module in-process, against a real registry on loopback.

The module is thin, so these tests check its shape: check mode, dry run, diff, changed, the
returned lists, failures as one message, and that the password never comes back.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import typing as t

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.registry.plugins.modules import registry_tag_retention
from tests.harness.images import ImagePusher
from tests.harness.registry import RegistryServer

DAY = 86400.0


def set_age(registry: RegistryServer, repository: str, tag: str, days: float) -> None:
    link = registry.tree / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"
    stamp = time.time() - days * DAY
    os.utime(link, (stamp, stamp))


def run_module(
    args: t.Dict[str, t.Any], capsys: pytest.CaptureFixture[str], check: bool = False, diff: bool = False
) -> t.Tuple[int, t.Dict[str, t.Any], str]:
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        registry_tag_retention.main()
    out = capsys.readouterr().out
    return int(exited.value.code or 0), json.loads(out), out


@pytest.fixture
def populated(registry: RegistryServer, pusher: ImagePusher) -> RegistryServer:
    """infra-ci: latest (an index whose children carry old build tags) and four old single-arch builds."""
    pusher.push_index("infra-ci", "latest", child_tags=["build-1-amd64", "build-1-arm64"], seed="1")
    for tag in ("build-1-amd64", "build-1-arm64", "latest"):
        set_age(registry, "infra-ci", tag, 30)
    for number in range(2, 6):
        pusher.push_image("infra-ci", f"build-{number}", seed=str(number))
        set_age(registry, "infra-ci", f"build-{number}", 20 - number)
    return registry


def base_args(registry: RegistryServer, **extra: t.Any) -> t.Dict[str, t.Any]:
    args = {"storage_root": str(registry.storage_root), "registry_url": registry.url, "keep_newest": 2}
    args.update(extra)
    return args


def test_dry_run_is_the_default_and_reports_changed_false(
    populated: RegistryServer, pusher: ImagePusher, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _out = run_module(base_args(populated), capsys)
    assert code == 0
    assert result["changed"] is False and result["dry_run"] is True
    assert result["deleted"] == []
    assert [item["tags"] for item in result["planned"]] == [["build-2"], ["build-3"]]
    assert result["msg"] == "Would delete 2 manifests (2 tags) in 1 repositories; would keep 5 tags."
    assert len(pusher.list_tags("infra-ci")) == 7


def test_check_mode_plans_predicts_changed_and_shows_the_diff_without_deleting(
    populated: RegistryServer, pusher: ImagePusher, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _out = run_module(base_args(populated, dry_run=False), capsys, check=True, diff=True)
    assert code == 0
    assert result["changed"] is True and result["dry_run"] is True and result["deleted"] == []
    (diff,) = result["diff"]
    assert diff["before_header"] == "infra-ci (tags)"
    before, after = diff["before"].splitlines(), diff["after"].splitlines()
    assert set(before) - set(after) == {"build-2", "build-3"}
    assert {"latest", "build-1-amd64", "build-1-arm64", "build-4", "build-5"} == set(after)
    assert len(pusher.list_tags("infra-ci")) == 7


def test_apply_deletes_keeps_the_index_children_and_a_second_run_changes_nothing(
    populated: RegistryServer, pusher: ImagePusher, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _out = run_module(base_args(populated, dry_run=False), capsys, diff=True)
    assert code == 0 and result["changed"] is True and result["dry_run"] is False
    assert [(item["repository"], item["tags"], item["reason"]) for item in result["deleted"]] == [
        ("infra-ci", ["build-2"], "old_tags"),
        ("infra-ci", ["build-3"], "old_tags"),
    ]
    kept = {item["tag"]: item["reason"] for item in result["kept"]}
    assert kept["build-1-amd64"] == "referenced_by_tag:latest"
    assert kept["latest"] == "protected"
    assert result["summary"]["deleted_tags"] == 2
    assert "never --delete-untagged" in result["next_step"]
    assert result["msg"].endswith("Run a plain garbage collection to reclaim the space.")
    assert set(pusher.list_tags("infra-ci")) == {"latest", "build-1-amd64", "build-1-arm64", "build-4", "build-5"}

    code, again, _out = run_module(base_args(populated, dry_run=False), capsys)
    assert code == 0 and again["changed"] is False and again["deleted"] == [] and again["planned"] == []


def test_the_report_file_holds_the_same_result(
    populated: RegistryServer, capsys: pytest.CaptureFixture[str], tmp_path: t.Any
) -> None:
    report = tmp_path / "retention.json"
    _code, result, _out = run_module(base_args(populated, report_path=str(report)), capsys)
    written = json.loads(report.read_text(encoding="utf-8"))
    assert written["planned"] == result["planned"] and written["kept"] == result["kept"]


def test_rejected_credentials_fail_in_one_sentence_and_the_password_never_comes_back(
    registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pusher = make_pusher(registry_basic)
    pusher.push_image("app", "old", seed="old")
    set_age(registry_basic, "app", "old", 30)
    wrong = "Wr0ng-" + str(registry_basic.password)[::-1]
    monkeypatch.setenv("REGISTRY_PASSWORD", wrong)  # the env fallback
    args = base_args(registry_basic, username=registry_basic.username, dry_run=False, keep_newest=0)
    code, result, out = run_module(args, capsys)
    assert code == 1 and result["failed"] is True
    assert result["msg"] == f"registry {registry_basic.url} rejected user '{registry_basic.username}' (401); check the credentials."
    assert wrong not in out and str(registry_basic.password) not in out
    assert pusher.list_tags("app") == ["old"]

    monkeypatch.setenv("REGISTRY_PASSWORD", str(registry_basic.password))
    code, result, out = run_module(args, capsys)
    assert code == 0 and [item["tags"] for item in result["deleted"]] == [["old"]]
    assert str(registry_basic.password) not in out


def test_an_unreadable_repository_fails_the_task_but_the_others_are_handled(
    registry: RegistryServer, pusher: ImagePusher, capsys: pytest.CaptureFixture[str]
) -> None:
    for repository in ("damaged", "healthy"):
        pusher.push_image(repository, "old", seed=repository)
        set_age(registry, repository, "old", 30)
        pusher.push_image(repository, "new", seed=repository + "new")
    link = registry.tree / "repositories" / "damaged" / "_manifests" / "tags" / "new" / "current" / "link"
    link.write_text("sha256:garbage", encoding="ascii")
    code, result, _out = run_module(base_args(registry, keep_newest=1, dry_run=False), capsys)
    assert code == 1 and result["failed"] is True
    assert result["changed"] is True
    assert [(item["repository"], item["tags"]) for item in result["deleted"]] == [("healthy", ["old"])]
    assert len(result["errors"]) == 1
    assert result["errors"][0].startswith("damaged: ") and "nothing is deleted in this repository" in result["errors"][0]
    assert result["msg"].startswith("1 problems, the first: damaged: ")
    assert "Traceback" not in json.dumps(result)


def test_another_run_holding_the_host_lock_fails_and_deletes_nothing(
    populated: RegistryServer, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    from ansible_collections.selfhosted.registry.plugins.module_utils._storage_scan import host_lock

    lock = str(tmp_path / "tools.lock")
    with host_lock("guarded garbage collection", lock):
        code, result, _out = run_module(base_args(populated, dry_run=False, lock_path=lock, lock_timeout=0), capsys)
    assert code == 1 and result["failed"] is True
    assert result["msg"].endswith("so this tag retention did not start")
    assert len(os.listdir(populated.tree / "repositories" / "infra-ci" / "_manifests" / "tags")) == 7

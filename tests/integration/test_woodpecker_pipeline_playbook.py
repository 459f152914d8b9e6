# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""woodpecker_pipeline through a real `ansible-playbook` run against the loopback Woodpecker server."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import typing as t

import pytest

from tests.harness.woodpecker_server import FakeWoodpecker

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
TOKEN = "wpt-Playbook-Secret-6e2d90b1c4"


@dataclasses.dataclass
class PlaybookRun:
    returncode: int
    stdout: str
    stderr: str
    log: str
    results: list[dict[str, t.Any]]

    def everything(self) -> str:
        return self.stdout + self.stderr + self.log + json.dumps(self.results)


@pytest.fixture
def server() -> t.Iterator[FakeWoodpecker]:
    fake = FakeWoodpecker().start()
    fake.add_user(TOKEN)
    fake.add_repo("infra", "ci-image", repo_id=12, branches=("main", "dev"), push=[TOKEN])
    yield fake
    fake.stop()


def run_playbook(tmp_path: pathlib.Path, server: FakeWoodpecker, *task_args: dict[str, t.Any],
                 check: bool = False, verbosity: int = 0, token_in: str = "vars",
                 token: str = TOKEN) -> PlaybookRun:
    """One play on localhost: each task runs the module (errors ignored), then every result is saved as JSON."""
    results_path = tmp_path / "results.json"
    tasks: list[dict[str, t.Any]] = []
    for index, args in enumerate(task_args):
        module_args = {"server_url": server.url, "repo": "infra/ci-image", "poll_interval": 0.01, **args}
        if token_in == "vars":
            module_args["token"] = "{{ wp_token }}"
        tasks.append({"name": f"woodpecker_pipeline {index}", "selfhosted.registry.woodpecker_pipeline": module_args,
                      "register": f"result_{index}", "ignore_errors": True})
    saved = "[" + ", ".join(f"result_{i}" for i in range(len(task_args))) + "]"
    tasks.append({"name": "Save the results", "ansible.builtin.copy": {
        "content": "{{ " + saved + " | to_json }}", "dest": str(results_path), "mode": "0600"},
        "check_mode": False})
    playbook = tmp_path / "woodpecker.yml"
    playbook.write_text(json.dumps([{"name": "Woodpecker", "hosts": "localhost", "gather_facts": False,
                                     "tasks": tasks}], indent=2))
    extra_vars = tmp_path / "vars.json"
    extra_vars.write_text(json.dumps({"wp_token": token, "ansible_python_interpreter": sys.executable}))
    log_path = tmp_path / "ansible.log"
    env = dict(os.environ,
               PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}",
               ANSIBLE_COLLECTIONS_PATH=str(REPO_ROOT / ".cache" / "collections"),
               ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               ANSIBLE_LOG_PATH=str(log_path),
               ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="false")
    if token_in == "env":
        env["WOODPECKER_TOKEN"] = token
    command = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"@{extra_vars}",
               str(playbook)]
    if check:
        command.append("--check")
    if verbosity:
        command.append("-" + "v" * verbosity)
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert results_path.exists(), f"the playbook did not finish:\n{completed.stdout}\n{completed.stderr}"
    return PlaybookRun(completed.returncode, completed.stdout, completed.stderr,
                       log_path.read_text() if log_path.exists() else "", json.loads(results_path.read_text()))


def test_trigger_and_wait_until_success(tmp_path: pathlib.Path, server: FakeWoodpecker) -> None:
    server.plan(12, ["pending", "running", "running", "success"])
    run = run_playbook(tmp_path, server, {"branch": "main", "variables": {"REASON": "incident"}, "wait": True})
    result = run.results[0]
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] and result["created_new"] and result["success"] and result["status"] == "success"
    assert result["pipeline"] == 1 and result["url"] == f"{server.url}/repos/12/pipeline/1"
    assert [s["state"] for s in result["steps"]] == ["success", "success"]
    assert server.stored(12, 1)["variables"] == {"REASON": "incident"}
    assert run.returncode == 0


def test_failure_fails_the_task_with_the_log_tail(tmp_path: pathlib.Path, server: FakeWoodpecker) -> None:
    log = [f"step output {n}" for n in range(100)] + ["Error: manifest unknown"]
    server.plan(12, ["pending", "running", "failure"], failing_step="push-image", logs={"push-image": log})
    run = run_playbook(tmp_path, server, {"wait": True, "log_lines": 3})
    result = run.results[0]
    assert result["failed"] and result["status"] == "failure" and not result["success"]
    assert result["failed_step"]["name"] == "push-image" and result["failed_step"]["exit_code"] == 1
    assert result["failed_step_log"] == ["step output 98", "step output 99", "Error: manifest unknown"]
    assert result["msg"].endswith("; last 3 log lines:\nstep output 98\nstep output 99\nError: manifest unknown")
    assert "step push-image (workflow build) ended failure with exit code 1" in result["msg"]
    assert "Traceback" not in run.stdout + run.stderr


def test_filtered_trigger(tmp_path: pathlib.Path, server: FakeWoodpecker) -> None:
    server.repos[12].manual_config = "filtered"
    result = run_playbook(tmp_path, server, {"branch": "main"}).results[0]
    assert result["failed"] and not result["changed"] and result["pipeline"] is None
    assert result["msg"].startswith("Woodpecker repository infra/ci-image, manual pipeline on branch main: nothing "
                                    "was started because no workflow runs for event manual (204 Pipeline-Filtered")


def test_restart_falls_back_to_a_trigger_and_is_idempotent(tmp_path: pathlib.Path, server: FakeWoodpecker) -> None:
    lost = server.add_pipeline(12, status="error", branch="dev", event="manual", config_stored=False,
                               variables={"IMAGE": "infra-ci"})
    server.plan(12, ["pending", "success"])
    args = {"action": "restart", "pipeline": lost, "fallback_to_trigger": True, "wait": True}
    first, second = run_playbook(tmp_path, server, args, args).results
    assert not first.get("failed"), first.get("msg")
    assert first["fallback_used"] and first["changed"] and first["branch"] == "dev" and first["success"]
    assert first["pipeline"] == 3  # 2 is the pipeline the buggy restart created already in error
    assert server.stored(12, 2)["status"] == "error" and server.stored(12, 2)["parent"] == lost
    assert second["reused"] and not second["changed"] and second["pipeline"] == 3
    assert len(server.repos[12].pipelines) == 3


def test_check_mode_sends_nothing(tmp_path: pathlib.Path, server: FakeWoodpecker) -> None:
    run = run_playbook(tmp_path, server, {"action": "trigger", "wait": True},
                       {"action": "restart", "fallback_to_trigger": True}, {"action": "cancel", "pipeline": 4},
                       {"action": "status"}, check=True)
    assert [r["changed"] for r in run.results] == [True, True, True, False]
    assert all(not r.get("failed") and r["pipeline"] is None for r in run.results)
    assert run.results[0]["msg"] == ("Check mode: would start a manual pipeline on the default branch of "
                                     "infra/ci-image; nothing was sent to the server.")
    assert server.requests == []


def test_idempotency_key_reuses_a_running_pipeline(tmp_path: pathlib.Path, server: FakeWoodpecker) -> None:
    args = {"branch": "main", "idempotency_key": "main@4d3c2b1a"}
    first, second = run_playbook(tmp_path, server, args, args).results
    assert first["created_new"] and first["changed"]
    assert second["reused"] and not second["changed"] and second["pipeline"] == first["pipeline"]
    assert second["status"] == "pending"
    assert len([r for r in server.api_requests("POST") if r.path.endswith("/pipelines")]) == 1
    variables = server.stored(12, first["pipeline"])["variables"]
    assert variables == {"SELFHOSTED_REGISTRY_IDEMPOTENCY_KEY": "main@4d3c2b1a"}


@pytest.mark.parametrize("token_in", ["vars", "env"])
def test_the_token_never_appears_in_output_results_errors_or_logs(tmp_path: pathlib.Path, server: FakeWoodpecker,
                                                                  token_in: str) -> None:
    server.add_pipeline(12, status="failure", logs={"push-image": ["denied"]})
    server.add_pipeline(12, status="blocked")
    server.plan(12, ["pending", "failure"], logs={"push-image": ["boom"]})
    run = run_playbook(
        tmp_path, server,
        {"action": "trigger", "wait": True},            # fails with a log tail
        {"action": "restart", "pipeline": 2},           # blocked: refused
        {"action": "status", "pipeline": 99},            # 404
        {"action": "trigger", "branch": "no-such"},      # 500
        {"action": "cancel", "pipeline": 1},
        verbosity=3, token_in=token_in)
    assert [bool(r.get("failed")) for r in run.results] == [True, True, True, True, False]
    assert TOKEN not in run.everything()
    assert server.requests and all(TOKEN not in r.query and TOKEN not in r.path for r in server.requests)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)


def test_a_rejected_token_is_not_echoed(tmp_path: pathlib.Path, server: FakeWoodpecker) -> None:
    wrong = "wpt-Revoked-0a1b2c3d4e"
    run = run_playbook(tmp_path, server, {"action": "status"}, verbosity=3, token=wrong)
    assert run.results[0]["failed"] and "rejected the token (401)" in run.results[0]["msg"]
    assert wrong not in run.everything()

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""woodpecker_pipeline run in-process (AnsibleModule with patched arguments) against the loopback server."""

from __future__ import annotations

import json
import typing as t

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.registry.plugins.modules import woodpecker_pipeline
from tests.harness.woodpecker_server import FakeWoodpecker

TOKEN = "wpt-Module-Secret-31f0aa9c"


@pytest.fixture
def server() -> t.Iterator[FakeWoodpecker]:
    fake = FakeWoodpecker().start()
    fake.add_user(TOKEN)
    fake.add_repo("acme", "app", repo_id=5, branches=("main", "dev"), push=[TOKEN])
    yield fake
    fake.stop()


class Run:
    def __init__(self, result: dict[str, t.Any], output: str) -> None:
        self.result = result
        self.output = output

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))


@pytest.fixture
def run_module(server: FakeWoodpecker, capsys: pytest.CaptureFixture[str]) -> t.Callable[..., Run]:
    def run(check: bool = False, **args: t.Any) -> Run:
        args.setdefault("server_url", server.url)
        args.setdefault("token", TOKEN)
        args.setdefault("repo", "acme/app")
        args.setdefault("poll_interval", 0.01)
        if check:
            args["_ansible_check_mode"] = True
        # An unhandled exception (a traceback for the user) escapes main() and fails this raises().
        with patch_module_args(args), pytest.raises(SystemExit):
            woodpecker_pipeline.main()
        captured = capsys.readouterr()
        output = captured.out + captured.err
        assert TOKEN not in output
        result = json.loads(captured.out)
        assert "exception" not in result
        return Run(result, output)

    return run


def test_trigger_without_wait(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    run = run_module(branch="dev", variables={"IMAGE": "infra-ci", "ATTEMPT": 2})
    result = run.result
    assert not run.failed and result["changed"] and result["created_new"] and not result["reused"]
    assert (result["pipeline"], result["status"], result["event"], result["branch"]) == (1, "pending", "manual", "dev")
    assert result["url"] == f"{server.url}/repos/5/pipeline/1"
    assert result["repo_id"] == 5 and result["repo"] == "acme/app"
    assert server.stored(5, 1)["variables"] == {"IMAGE": "infra-ci", "ATTEMPT": "2"}
    assert result["msg"] == f"Started Woodpecker pipeline acme/app#1 (manual on dev), status pending: {result['url']}"


def test_trigger_wait_success(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.plan(5, ["pending", "running", "success"])
    result = run_module(wait=True).result
    assert not result.get("failed")
    assert result["status"] == "success" and result["finished"] and result["success"]
    assert [(s["name"], s["state"]) for s in result["steps"]] == [("clone", "success"), ("push-image", "success")]
    assert result["failed_step"] is None and result["failed_step_log"] == []


def test_trigger_wait_failure_fails_with_step_and_log_tail(run_module: t.Callable[..., Run],
                                                           server: FakeWoodpecker) -> None:
    server.plan(5, ["pending", "running", "failure"], failing_step="clone",
                logs={"clone": [f"fetching {n}" for n in range(10)] + ["fatal: couldn't find remote ref"]})
    run = run_module(wait=True, log_lines=2)
    assert run.failed and run.result["changed"]
    assert run.result["msg"] == (
        f"Woodpecker pipeline acme/app#1 finished with status failure: step clone (workflow build) ended failure "
        f"with exit code 1 ({server.url}/repos/5/pipeline/1); last 2 log lines:\n"
        "fetching 9\nfatal: couldn't find remote ref")
    assert run.result["failed_step"]["name"] == "clone"
    assert run.result["failed_step_log"] == ["fetching 9", "fatal: couldn't find remote ref"]


def test_failure_without_wait_is_reported_not_failed(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.add_pipeline(5, status="failure", logs={"push-image": ["denied"]})
    run = run_module(action="status", pipeline=1)
    assert not run.failed and not run.result["changed"]
    assert run.result["failed_step_log"] == ["denied"] and run.result["status"] == "failure"


def test_log_lines_zero_reads_no_log(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.add_pipeline(5, status="failure", logs={"push-image": ["denied"]})
    run = run_module(action="status", pipeline=1, log_lines=0)
    assert run.result["failed_step"]["name"] == "push-image" and run.result["failed_step_log"] == []
    assert not [r for r in server.requests if "/logs/" in r.path]


def test_filtered_trigger_fails_plainly(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.repos[5].manual_config = "filtered"
    run = run_module()
    assert run.failed and not run.result["changed"] and run.result["pipeline"] is None
    assert "nothing was started because no workflow runs for event manual (204 Pipeline-Filtered" in run.result["msg"]


def test_config_fetch_error_returns_the_stored_pipeline(run_module: t.Callable[..., Run],
                                                        server: FakeWoodpecker) -> None:
    server.repos[5].manual_config = "fetch_error"
    run = run_module()
    assert run.failed and run.result["pipeline"] == 1 and run.result["status"] == "error" and run.result["changed"]
    assert run.result["errors"] == ["could not load config from forge: 500 Internal Server Error"]


def test_restart_with_fallback(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.add_pipeline(5, status="error", event="manual", config_stored=False, variables={"IMAGE": "infra-ci"})
    run = run_module(action="restart", fallback_to_trigger=True)
    result = run.result
    assert not run.failed and result["changed"] and result["fallback_used"] and result["created_new"]
    assert result["pipeline"] == 3 and result["event"] == "manual"  # 2 is the stillborn restart
    assert result["msg"].startswith("Started Woodpecker pipeline acme/app#3 (manual on main) in place of restarting "
                                    "#1, whose definition the server lost")


def test_restart_without_fallback_fails_naming_the_option(run_module: t.Callable[..., Run],
                                                          server: FakeWoodpecker) -> None:
    server.add_pipeline(5, status="error", event="manual", config_stored=False)
    run = run_module(action="restart", pipeline=1)
    assert run.failed and "set fallback_to_trigger to start a fresh manual pipeline on branch main" \
        in run.result["msg"]


def test_restart_blocked(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.add_pipeline(5, status="blocked")
    run = run_module(action="restart", pipeline=1)
    assert run.failed and "is blocked waiting for approval" in run.result["msg"]
    assert server.api_requests("POST") == []


def test_restart_reports_the_lineage(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.add_pipeline(5, status="failure")
    run = run_module(action="restart", pipeline=1)
    assert run.result["pipeline"] == 2 and run.result["parent"] == 1 and run.result["changed"]
    assert run.result["msg"].startswith("Restarted acme/app#1 as Woodpecker pipeline acme/app#2")
    again = run_module(action="restart", pipeline=1)
    assert again.result["reused"] and not again.result["changed"] and again.result["pipeline"] == 2


def test_cancel(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.add_pipeline(5, status="running")
    run = run_module(action="cancel", pipeline=1, wait=True)
    assert not run.failed and run.result["changed"] and run.result["canceled"] and run.result["status"] == "killed"
    again = run_module(action="cancel", pipeline=1)
    assert not again.result["changed"] and "had already finished" in again.result["msg"]


def test_cancel_needs_a_number(run_module: t.Callable[..., Run]) -> None:
    run = run_module(action="cancel")
    assert run.failed and "pipeline" in run.result["msg"]


@pytest.mark.parametrize("action, changed", [("trigger", True), ("restart", True), ("cancel", True),
                                             ("status", False)])
def test_check_mode_sends_nothing(run_module: t.Callable[..., Run], server: FakeWoodpecker, action: str,
                                  changed: bool) -> None:
    run = run_module(check=True, action=action, pipeline=3)
    assert run.result["changed"] is changed and run.result["pipeline"] is None
    assert run.result["msg"].startswith("Check mode: would ") and run.result["msg"].endswith(
        "nothing was sent to the server.")
    assert server.requests == []


def test_idempotency_key_reuses_the_pipeline(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    first = run_module(idempotency_key="main@4d3c2b1")
    server.advance(5, first.result["pipeline"], "success")
    second = run_module(idempotency_key="main@4d3c2b1", wait=True)
    assert second.result["reused"] and not second.result["changed"] and second.result["success"]
    assert second.result["pipeline"] == first.result["pipeline"]
    assert len(server.api_requests("POST")) == 1
    forced = run_module(idempotency_key="main@4d3c2b1", force=True)
    assert forced.result["created_new"] and forced.result["pipeline"] == 2


def test_wait_timeout(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    run = run_module(wait=True, wait_timeout=0)
    assert run.failed and run.result["timed_out"] and run.result["status"] == "pending"
    assert run.result["msg"].startswith("Woodpecker pipeline acme/app#1 did not finish within 0 s (last status "
                                        "pending); it goes on running on the server")


def test_wait_blocked_fails(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    server.plan(5, ["pending", "blocked"])
    run = run_module(wait=True)
    assert run.failed and "is blocked waiting for approval in the Woodpecker UI" in run.result["msg"]


def test_environment_fallbacks(run_module: t.Callable[..., Run], server: FakeWoodpecker,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WOODPECKER_SERVER", server.url)
    monkeypatch.setenv("WOODPECKER_TOKEN", TOKEN)
    with patch_module_args({"repo_id": 5, "action": "status", "_ansible_check_mode": False}), \
            pytest.raises(SystemExit):
        woodpecker_pipeline.main()
    assert server.requests and server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_nested_variables_fail_in_one_sentence(run_module: t.Callable[..., Run], server: FakeWoodpecker) -> None:
    run = run_module(variables={"TAGS": ["a", "b"]})
    assert run.failed and run.result["msg"] == ("pipeline variable TAGS: the value must be a string or number, "
                                                "not a list")
    assert server.requests == []


def test_rejected_token_and_unreachable_server(run_module: t.Callable[..., Run]) -> None:
    run = run_module(token="wpt-wrong-5150")
    assert run.failed and "rejected the token (401)" in run.result["msg"] and "wpt-wrong-5150" not in run.output
    down = run_module(server_url="http://127.0.0.1:9", timeout=1)
    assert down.failed and "cannot reach the Woodpecker server at http://127.0.0.1:9" in down.result["msg"]
    assert "Traceback" not in down.output


def test_a_step_that_ended_in_error_puts_its_error_in_the_message(run_module: t.Callable[..., Run],
                                                                  server: FakeWoodpecker) -> None:
    pull_error = "Error response from daemon: manifest for registry.example:5050/infra-ci:latest not found"
    server.plan(5, ["pending", "running", "error"], failing_step="push-image", step_error=pull_error)
    run = run_module(wait=True)
    assert run.failed
    assert run.result["failed_step"]["state"] == "error" and run.result["failed_step"]["error"] == pull_error
    assert f"step push-image (workflow build) ended error: {pull_error}" in run.result["msg"]


def test_a_failure_that_stored_a_pipeline_returns_its_address(run_module: t.Callable[..., Run],
                                                              server: FakeWoodpecker) -> None:
    server.repos[5].manual_config = "fetch_error"
    run = run_module()
    assert run.failed and run.result["changed"] and run.result["pipeline"] == 1
    assert run.result["url"] == f"{server.url}/repos/5/pipeline/1"


def test_a_restart_whose_configuration_does_not_lint_returns_the_stored_pipeline(
    run_module: t.Callable[..., Run], server: FakeWoodpecker
) -> None:
    old = server.add_pipeline(5, status="error", errors=["[linter] steps.push-image.image: image is required"])
    server.stored(5, old)["_workflows"] = {}
    server.repos[5].restart_config = "lint_error"
    run = run_module(action="restart", pipeline=old, fallback_to_trigger=True)
    assert run.failed and run.result["changed"] and run.result["pipeline"] == old + 1
    assert run.result["url"] == f"{server.url}/repos/5/pipeline/{old + 1}"
    assert "does not parse or lint" in run.result["msg"] and not run.result["fallback_used"]


def test_a_lost_trigger_answer_with_a_key_returns_the_pipeline_and_warns(
    run_module: t.Callable[..., Run], server: FakeWoodpecker
) -> None:
    server.fault_answer("drop", path=r"/api/repos/\d+/pipelines")
    run = run_module(idempotency_key="incident-7")
    assert not run.failed and run.result["changed"] and run.result["pipeline"] == 1
    assert "may have started the pipeline; it did: pipeline #1 carries idempotency key incident-7" in run.output

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Woodpecker client against the loopback Woodpecker server of tests/harness (real HTTP)."""

from __future__ import annotations

import base64
import json
import pathlib
import socket
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._woodpecker_client import (
    IDEMPOTENCY_VARIABLE,
    RESTART_OF_VARIABLE,
    ActionRequest,
    Repo,
    WoodpeckerClient,
    WoodpeckerError,
    decode_log,
    parse_pipeline,
    run_action,
    stringify_variables,
    wait_for_pipeline,
)
from tests.harness.tls import make_server_tls
from tests.harness.woodpecker_server import FakeWoodpecker

TOKEN = "wpt-Secret-4b1d9e07c2a5"
PULL_ONLY = "wpt-pull-only-77aa"
STRANGER = "wpt-stranger-9c9c"


class Sleeps(list):
    """Records the delays asked for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


MakeFake = t.Callable[..., t.Tuple[FakeWoodpecker, int]]


def start_fake(api_version: int = 3, **kwargs: t.Any) -> tuple[FakeWoodpecker, int]:
    server = FakeWoodpecker(api_version=api_version, **kwargs).start()
    for token in (TOKEN, PULL_ONLY, STRANGER):
        server.add_user(token)
    repo_id = server.add_repo("acme", "app", repo_id=7, branches=("main", "dev"),
                              pull=[PULL_ONLY], push=[TOKEN])
    return server, repo_id


@pytest.fixture
def make_fake() -> t.Iterator[MakeFake]:
    """``make_fake(api_version=3, **options)``: start_fake, with every server stopped at teardown."""
    started: list[FakeWoodpecker] = []

    def factory(api_version: int = 3, **kwargs: t.Any) -> tuple[FakeWoodpecker, int]:
        server, repo_id = start_fake(api_version, **kwargs)
        started.append(server)
        return server, repo_id

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(params=[1, 2, 3], ids=["v1", "v2", "v3"])
def any_version(request: pytest.FixtureRequest, make_fake: MakeFake) -> tuple[FakeWoodpecker, int]:
    return make_fake(request.param)


@pytest.fixture
def fake(make_fake: MakeFake) -> tuple[FakeWoodpecker, int]:
    return make_fake(3)


def client_for(server: FakeWoodpecker, token: str = TOKEN, **kwargs: t.Any) -> WoodpeckerClient:
    kwargs.setdefault("sleep", Sleeps())
    kwargs.setdefault("timeout", 5)
    return WoodpeckerClient(server.url, token, **kwargs)


def assert_token_never_sent_outside_header(server: FakeWoodpecker, token: str = TOKEN) -> None:
    assert server.requests, "no request reached the server"
    for request in server.requests:
        assert token not in request.path and token not in request.query
        assert token.encode() not in request.body
        assert request.headers.get("authorization") == f"Bearer {token}"


# ---- repositories, auth and the shape of answers ------------------------------------------------------
def test_repo_by_name_and_by_id(any_version: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = any_version
    client = client_for(server)
    by_name = client.lookup_repo("acme/app")
    assert by_name == Repo(id=repo_id, full_name="acme/app", default_branch="main")
    assert client.get_repo(repo_id) == by_name
    lookup = server.api_requests("GET")[0]
    assert lookup.path == "/api/repos/lookup/acme/app"  # raw slash, not %2F


def test_wrong_token_is_a_401_sentence_without_the_token(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    bad = "wpt-revoked-0000deadbeef"
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server, bad).lookup_repo("acme/app")
    assert caught.value.reason == "unauthorized"
    assert "rejected the token (401)" in str(caught.value)
    assert bad not in str(caught.value) and bad not in repr(caught.value)


def test_missing_pull_permission_answers_404(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server, STRANGER).lookup_repo("acme/app")
    assert str(caught.value) == ("Woodpecker repository acme/app: not found, or the token lacks pull permission "
                                 "(404)")


def test_missing_push_permission_on_trigger_answers_404(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    client = client_for(server, PULL_ONLY)
    repo = client.lookup_repo("acme/app")
    with pytest.raises(WoodpeckerError) as caught:
        client.trigger(repo, "main")
    assert caught.value.reason == "not_found"
    assert "lacks push permission (404)" in str(caught.value)


def test_non_numeric_repo_id_is_refused(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    with pytest.raises(ValueError):
        client_for(server).get_repo("acme")  # type: ignore[arg-type]


def test_html_answer_means_not_a_woodpecker_api(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    # A server_url with a wrong path: every route below it is an unknown route, answered 200 with the UI.
    client = WoodpeckerClient(server.url + "/ci", TOKEN, sleep=Sleeps())
    with pytest.raises(WoodpeckerError) as caught:
        client.lookup_repo("acme/app")
    assert caught.value.reason == "not_woodpecker"
    assert f"this does not look like a Woodpecker API at {server.url}/ci" in str(caught.value)
    assert "text/html" in str(caught.value)


@pytest.mark.parametrize("body", [b"{not json", b"[" * 100000 + b"]" * 100000], ids=["malformed", "nested-deeply"])
def test_malformed_json_is_a_sentence(fake: tuple[FakeWoodpecker, int], body: bytes) -> None:
    server = fake[0]
    server.force_answers(200, body=body, content_type="application/json")
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).lookup_repo("acme/app")
    assert str(caught.value) == "Woodpecker repository acme/app: the server answered with malformed JSON"


def test_pre_1_0_server_is_named_out_of_scope(make_fake: MakeFake) -> None:
    server = make_fake(api_version=0)[0]
    client = client_for(server)
    with pytest.raises(WoodpeckerError) as caught:
        client.lookup_repo("acme/app")
    assert str(caught.value) == (f"Woodpecker at {server.url} runs version 0.15.11, older than 1.0 (owner/name "
                                 "paths and 'builds'); such servers are not supported, upgrade the server to 1.0 "
                                 "or later")
    with pytest.raises(WoodpeckerError) as by_id:
        client.get_repo(7)
    assert by_id.value.reason == "unsupported_version"


def test_pre_1_0_development_build_is_recognised_by_its_routes(make_fake: MakeFake) -> None:
    server = make_fake(api_version=0, version="next-8f2a1c")[0]
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).lookup_repo("acme/app")
    assert caught.value.reason == "unsupported_version" and "runs version next-8f2a1c, older than 1.0" \
        in str(caught.value)


def test_a_development_build_of_1_0_or_later_keeps_the_404(make_fake: MakeFake) -> None:
    server = make_fake(api_version=3, version="next-8f2a1c")[0]
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).lookup_repo("acme/missing")
    assert caught.value.reason == "not_found"


def test_version(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    assert client_for(server).version() == "3.17.0"


# ---- trigger ----------------------------------------------------------------------------------------
def test_trigger_sends_branch_and_variables_as_json(any_version: tuple[FakeWoodpecker, int]) -> None:
    server = any_version[0]
    client = client_for(server)
    repo = client.lookup_repo("acme/app")
    pipeline = client.trigger(repo, "dev", {"IMAGE": "infra-ci"})
    assert (pipeline.number, pipeline.event, pipeline.branch, pipeline.status) == (1, "manual", "dev", "pending")
    post = server.api_requests("POST")[0]
    assert post.path == f"/api/repos/{repo.id}/pipelines" and post.query == ""
    assert json.loads(post.body) == {"branch": "dev", "variables": {"IMAGE": "infra-ci"}}
    assert server.stored(repo.id, 1)["variables"] == {"IMAGE": "infra-ci"}
    assert client.pipeline_url(repo, 1) == f"{server.url}/repos/{repo.id}/pipeline/1"
    assert_token_never_sent_outside_header(server)


def test_trigger_filtered_204_says_no_workflow_runs_on_manual(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.repos[repo_id].manual_config = "filtered"
    client = client_for(server)
    with pytest.raises(WoodpeckerError) as caught:
        client.trigger(client.lookup_repo("acme/app"), "main")
    assert caught.value.reason == "filtered"
    assert "nothing was started because no workflow runs for event manual (204 Pipeline-Filtered" \
        in str(caught.value)
    assert server.repos[repo_id].pipelines == {}


def test_trigger_204_without_header_reports_the_stored_error_pipeline(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.add_pipeline(repo_id, status="success", branch="main", event="manual")
    server.repos[repo_id].manual_config = "fetch_error"
    client = client_for(server)
    with pytest.raises(WoodpeckerError) as caught:
        client.trigger(client.lookup_repo("acme/app"), "main")
    error = caught.value
    assert error.reason == "config_error" and error.pipeline is not None and error.pipeline.number == 2
    assert str(error) == ("Woodpecker repository acme/app, manual pipeline on branch main: the server could not "
                          "fetch the pipeline configuration and stored pipeline #2 in status error: could not load "
                          "config from forge: 500 Internal Server Error")


def test_trigger_204_without_header_and_nothing_stored(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.add_pipeline(repo_id, status="success", branch="main", event="manual")
    client = client_for(server)
    repo = client.lookup_repo("acme/app")
    server.force_answers(204, method="POST")
    with pytest.raises(WoodpeckerError) as caught:
        client.trigger(repo, "main")
    assert caught.value.reason == "config_error" and caught.value.pipeline is None
    assert "could not fetch the pipeline configuration (204 without Pipeline-Filtered)" in str(caught.value)


def test_trigger_unknown_branch_500_is_not_retried(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    client = client_for(server)
    with pytest.raises(WoodpeckerError) as caught:
        client.trigger(client.lookup_repo("acme/app"), "no-such-branch")
    assert caught.value.reason == "server_error"
    assert "branch no-such-branch: the server failed to start it (500); the branch may not exist" \
        in str(caught.value)
    assert len(server.api_requests("POST")) == 1


# ---- reading pipelines ------------------------------------------------------------------------------
def test_pipeline_with_steps_and_timestamps_in_every_spelling(any_version: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = any_version
    number = server.add_pipeline(repo_id, status="failure", failing_step="push-image")
    pipeline = client_for(server).get_pipeline(Repo(repo_id, "acme/app", "main"), number)
    assert pipeline.status == "failure" and pipeline.finished and not pipeline.success
    assert pipeline.created_at and pipeline.started_at and pipeline.finished_at
    assert [(s.workflow, s.name, s.state, s.exit_code) for s in pipeline.steps] == [
        ("build", "clone", "success", 0), ("build", "push-image", "failure", 1)]
    assert all(s.started and s.finished for s in pipeline.steps)
    assert pipeline.failed_step is not None and pipeline.failed_step.name == "push-image"
    spelled = "started" if server.api_version >= 3 else "start_time"
    assert spelled in pipeline.raw["workflows"][0]["children"][0]


@pytest.mark.parametrize("payload, expected", [
    ({"number": 1, "errors": None}, ()),
    ({"number": 1, "errors": [{"message": "yaml: line 3"}, {"message": "bad"}]}, ("yaml: line 3", "bad")),
    ({"number": 1, "error": "config not found"}, ("config not found",)),
    ({"number": 1, "error": ""}, ()),
])
def test_errors_in_every_form(payload: dict[str, t.Any], expected: tuple[str, ...]) -> None:
    assert parse_pipeline(payload, "x").errors == expected


def test_a_payload_that_is_not_a_pipeline_is_a_sentence() -> None:
    with pytest.raises(WoodpeckerError) as caught:
        parse_pipeline(["not", "a", "pipeline"], "Woodpecker pipeline acme/app#3")
    assert str(caught.value) == "Woodpecker pipeline acme/app#3: the server answered with something that is not " \
                                "a pipeline"


@pytest.mark.parametrize("status, finished", [
    ("created", False), ("pending", False), ("running", False), ("blocked", False), ("something-new", False),
    ("success", True), ("failure", True), ("killed", True), ("error", True), ("declined", True),
    ("skipped", True), ("canceled", True),
])
def test_statuses(status: str, finished: bool) -> None:
    assert parse_pipeline({"number": 1, "status": status}, "x").finished is finished


def test_list_filters_client_side_when_the_server_ignores_them(any_version: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = any_version
    for branch, event, status in [("main", "push", "success"), ("dev", "manual", "failure"),
                                  ("dev", "push", "failure"), ("main", "manual", "failure")]:
        server.add_pipeline(repo_id, status=status, branch=branch, event=event)
    client = client_for(server)
    repo = client.lookup_repo("acme/app")
    found = client.list_pipelines(repo, branch="dev", status="failure")
    assert [p.number for p in found] == [3, 2]
    assert [p.number for p in client.list_pipelines(repo, event="manual")] == [4, 2]
    listing = server.api_requests("GET")[-1]
    assert "branch=dev" not in listing.query and "event=manual" in listing.query


def test_pagination_stops_at_the_end_and_never_asks_more_than_50(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    for _number in range(120):
        server.add_pipeline(repo_id, status="success")
    client = client_for(server)
    repo = client.lookup_repo("acme/app")
    numbers = [p.number for p in client.iter_pipelines(repo, max_pages=5)]
    assert numbers == list(range(120, 0, -1))
    pages = [r.query for r in server.api_requests("GET") if r.path.endswith("/pipelines")]
    assert pages == ["page=1&perPage=50", "page=2&perPage=50", "page=3&perPage=50"]
    assert len(list(client.iter_pipelines(repo, max_pages=1))) == 50


def test_pagination_guard_against_a_server_that_ignores_page(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    page = json.dumps([{"number": n, "status": "success", "branch": "main"} for n in range(60, 10, -1)]).encode()
    server.force_answers(200, 200, 200, body=page, content_type="application/json")
    numbers = list(client_for(server).iter_pipelines(Repo(repo_id, "acme/app", "main"), max_pages=3))
    assert len(numbers) == 50
    assert len(server.api_requests("GET")) == 2  # the repeated page ends the walk


def test_a_list_answer_that_is_not_a_list(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.force_answers(200, body=b'{"message": "maintenance"}', content_type="application/json")
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).list_pipelines(Repo(repo_id, "acme/app", "main"))
    assert str(caught.value) == "Woodpecker repository acme/app: the pipeline list is not a list"


def test_step_log_is_decoded_from_base64_with_null_entries(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="failure",
                                 logs={"push-image": ["pushing", None, "error: 404 manifest unknown"]})
    client = client_for(server)
    repo = client.lookup_repo("acme/app")
    pipeline = client.get_pipeline(repo, number)
    clone, push = pipeline.steps
    assert client.step_log(repo, number, push) == ["pushing", "", "error: 404 manifest unknown"]
    assert client.step_log(repo, number, clone) == []  # the server answers null


def test_decode_log_skips_metadata_entries_and_splits_lines() -> None:
    entries = [
        {"type": 0, "data": base64.b64encode(b"one\ntwo\n").decode()},
        {"type": 2, "data": base64.b64encode(b"1").decode()},
        {"type": 1, "data": "%%%not base64"},
    ]
    assert decode_log(entries) == ["one", "two", "[log line that is not valid base64]"]
    assert decode_log(None) == []


# ---- restart and cancel -----------------------------------------------------------------------------
def test_restart_answers_a_new_pipeline_whose_parent_is_the_old_one(any_version: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = any_version
    old = server.add_pipeline(repo_id, status="failure", branch="dev", variables={"K": "V"})
    client = client_for(server)
    new = client.restart(client.lookup_repo("acme/app"), old)
    assert (new.number, new.parent, new.branch, new.variables) == (old + 1, old, "dev", {"K": "V"})
    restart_post = server.api_requests("POST")[0]
    assert restart_post.query == "" and restart_post.body == b""


def test_restart_of_a_blocked_pipeline(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="blocked")
    client = client_for(server)
    repo = client.lookup_repo("acme/app")
    with pytest.raises(WoodpeckerError) as direct:
        client.restart(repo, number)
    assert direct.value.reason == "blocked" and "(400: cannot restart a pipeline with status blocked)" in str(direct.value)
    posts = len(server.api_requests("POST"))
    with pytest.raises(WoodpeckerError) as action:
        run_action(client, ActionRequest(action="restart", repo="acme/app", pipeline=number))
    assert str(action.value) == ("Woodpecker pipeline acme/app#1 is blocked waiting for approval; a blocked pipeline "
                                 "cannot be restarted, approve or decline it first")
    assert len(server.api_requests("POST")) == posts  # refused before sending anything


@pytest.mark.parametrize("bug_answer", ["200", "404", "500"])
def test_definition_not_found_without_fallback_names_the_option(bug_answer: str, make_fake: MakeFake) -> None:
    server, repo_id = make_fake(restart_bug=bug_answer)
    number = server.add_pipeline(repo_id, status="error", event="manual", config_stored=False,
                                 errors=["could not load config"])
    with pytest.raises(WoodpeckerError) as caught:
        run_action(client_for(server), ActionRequest(action="restart", repo="acme/app", pipeline=number))
    assert caught.value.reason == "definition_not_found"
    also = " or the token lacks push permission" if bug_answer == "404" else ""
    assert f"cannot be restarted because the server lost its definition (pipeline definition not found, " \
           f"answer {bug_answer}{also}); set fallback_to_trigger" in str(caught.value)


@pytest.mark.parametrize("bug_answer", ["200", "404", "500"])
def test_definition_not_found_falls_back_to_a_fresh_trigger(bug_answer: str, make_fake: MakeFake) -> None:
    server, repo_id = make_fake(restart_bug=bug_answer)
    number = server.add_pipeline(repo_id, status="error", branch="dev", event="manual", config_stored=False,
                                 variables={"IMAGE": "infra-ci"})
    request = ActionRequest(action="restart", repo="acme/app", pipeline=number, fallback_to_trigger=True,
                            variables={"EXTRA": "1"})
    outcome = run_action(client_for(server), request)
    assert outcome.fallback_used and outcome.created_new and outcome.changed
    fresh = outcome.pipeline
    assert (fresh.event, fresh.branch, fresh.parent) == ("manual", "dev", 0)
    assert fresh.variables == {"IMAGE": "infra-ci", "EXTRA": "1", RESTART_OF_VARIABLE: str(number)}
    # Running the same restart again finds the fallback pipeline instead of starting a third one.
    again = run_action(client_for(server), request)
    assert again.reused and not again.changed and again.pipeline.number == fresh.number


def test_restart_404_on_a_healthy_pipeline_is_a_permission_problem(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="failure")
    with pytest.raises(WoodpeckerError) as caught:
        run_action(client_for(server, PULL_ONLY),
                   ActionRequest(action="restart", repo="acme/app", pipeline=number, fallback_to_trigger=True))
    assert str(caught.value) == "Woodpecker pipeline acme/app#1: not found, or the token lacks push permission (404)"
    assert len(server.repos[repo_id].pipelines) == 1


def test_restart_latest_failed_on_branch(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.add_pipeline(repo_id, status="failure", branch="main")          # 1
    failed = server.add_pipeline(repo_id, status="failure", branch="main")  # 2
    server.add_pipeline(repo_id, status="success", branch="dev")           # 3
    client = client_for(server)
    outcome = run_action(client, ActionRequest(action="restart", repo="acme/app", branch="main"))
    assert outcome.created_new and outcome.pipeline.parent == failed and outcome.pipeline.number == 4
    # The newest pipeline on main is now the (pending) restart: nothing left to rebuild.
    again = run_action(client, ActionRequest(action="restart", repo="acme/app", branch="main"))
    assert again.reused and again.pipeline.number == 4 and not again.changed
    # force restarts the latest failed one regardless.
    forced = run_action(client, ActionRequest(action="restart", repo="acme/app", branch="main", force=True))
    assert forced.created_new and forced.pipeline.parent == failed and forced.pipeline.number == 5


def test_restart_of_a_number_is_idempotent_through_lineage(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="failure")
    client = client_for(server)
    request = ActionRequest(action="restart", repo="acme/app", pipeline=number)
    first = run_action(client, request)
    second = run_action(client, request)
    assert first.created_new and second.reused and second.pipeline.number == first.pipeline.number
    assert len(server.repos[repo_id].pipelines) == 2


def test_restart_without_any_failed_pipeline(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.add_pipeline(repo_id, status="success")
    with pytest.raises(WoodpeckerError) as caught:
        run_action(client_for(server), ActionRequest(action="restart", repo="acme/app", force=True))
    assert str(caught.value) == "Woodpecker repository acme/app: no failed pipeline on branch main among the 100 " \
                                "most recent"


@pytest.mark.parametrize("api_version, expected", [(2, "killed"), (3, "canceled")])
def test_cancel_a_pending_pipeline(api_version: int, expected: str, make_fake: MakeFake) -> None:
    server, repo_id = make_fake(api_version)
    number = server.add_pipeline(repo_id, status="pending")
    client = client_for(server)
    outcome = run_action(client, ActionRequest(action="cancel", repo="acme/app", pipeline=number))
    assert outcome.canceled and outcome.changed and outcome.pipeline.status == expected
    cancel = server.api_requests("POST")[0]
    assert cancel.path == f"/api/repos/{repo_id}/pipelines/{number}/cancel"
    # Canceling again sends nothing: the pipeline is finished.
    again = run_action(client, ActionRequest(action="cancel", repo="acme/app", pipeline=number))
    assert not again.changed and len(server.api_requests("POST")) == 1


def test_cancel_a_running_pipeline_gives_killed(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="running")
    outcome = run_action(client_for(server), ActionRequest(action="cancel", repo="acme/app", pipeline=number))
    assert outcome.pipeline.status == "killed"


# ---- waiting, failure report, idempotency -----------------------------------------------------------
def test_trigger_wait_failure_collects_the_failing_step_log_tail(any_version: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = any_version
    log = [f"line {n}" for n in range(1, 81)]
    server.plan(repo_id, ["pending", "running", "running", "failure"], failing_step="push-image",
                logs={"push-image": log})
    clock = FakeClock()
    request = ActionRequest(action="trigger", repo="acme/app", wait=True, poll_interval=5, wait_timeout=60,
                            log_lines=10)
    outcome = run_action(client_for(server), request, clock=clock, sleep=clock.sleep)
    assert outcome.pipeline.status == "failure" and not outcome.timed_out
    assert outcome.failed_step is not None and outcome.failed_step.name == "push-image"
    assert outcome.failed_step_log == log[-10:]
    assert clock.sleeps == [5, 5, 5]


def test_wait_gives_up_at_the_timeout_and_treats_unknown_statuses_as_running(
        fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="waiting-for-something-new")
    client = client_for(server)
    repo = client.lookup_repo("acme/app")
    clock = FakeClock()
    last, timed_out = wait_for_pipeline(client, repo, client.get_pipeline(repo, number), 25, 10,
                                        clock=clock, sleep=clock.sleep)
    assert timed_out and last.status == "waiting-for-something-new"
    assert clock.sleeps == [10, 10, 5]


def test_wait_stops_at_blocked(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.plan(repo_id, ["pending", "blocked"])
    clock = FakeClock()
    outcome = run_action(client_for(server), ActionRequest(action="trigger", repo="acme/app", wait=True),
                         clock=clock, sleep=clock.sleep)
    assert outcome.pipeline.status == "blocked" and not outcome.timed_out


def test_status_of_the_latest_pipeline_on_a_branch(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    server.add_pipeline(repo_id, status="success", branch="dev")
    server.add_pipeline(repo_id, status="running", branch="main")
    server.add_pipeline(repo_id, status="failure", branch="dev", logs={"push-image": ["boom"]})
    outcome = run_action(client_for(server), ActionRequest(action="status", repo="acme/app", branch="dev"))
    assert outcome.pipeline.number == 3 and not outcome.changed
    assert outcome.failed_step_log == ["boom"]
    assert server.api_requests("POST") == []


def test_idempotency_key_returns_the_matching_pipeline_instead_of_starting_another(
        fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    client = client_for(server)
    request = ActionRequest(action="trigger", repo="acme/app", branch="main", idempotency_key="main@abc123")
    first = run_action(client, request)
    assert first.created_new and first.pipeline.variables[IDEMPOTENCY_VARIABLE] == "main@abc123"
    server.advance(repo_id, first.pipeline.number, "success")
    server.add_pipeline(repo_id, status="success", branch="main", event="push")  # newer, unrelated
    second = run_action(client, request)
    assert second.reused and not second.changed and second.pipeline.number == first.pipeline.number
    assert second.pipeline.status == "success"
    other_branch = run_action(client, ActionRequest(action="trigger", repo="acme/app", branch="dev",
                                                    idempotency_key="main@abc123"))
    assert other_branch.created_new
    forced = run_action(client, ActionRequest(action="trigger", repo="acme/app", branch="main",
                                              idempotency_key="main@abc123", force=True))
    assert forced.created_new and forced.pipeline.number not in (first.pipeline.number, other_branch.pipeline.number)
    assert len(server.api_requests("POST")) == 3


@pytest.mark.parametrize("newer, reused", [(99, True), (100, False)])
def test_idempotency_looks_at_the_100_most_recent_pipelines(fake: tuple[FakeWoodpecker, int], newer: int,
                                                            reused: bool) -> None:
    server, repo_id = fake
    keyed = server.add_pipeline(repo_id, status="success", event="manual",
                                variables={IDEMPOTENCY_VARIABLE: "rebuild-1"})
    for _number in range(newer):
        server.add_pipeline(repo_id, status="success", event="manual")
    outcome = run_action(client_for(server), ActionRequest(action="trigger", repo="acme/app",
                                                           idempotency_key="rebuild-1"))
    assert outcome.reused is reused
    assert (outcome.pipeline.number == keyed) is reused


def test_variables_are_strings() -> None:
    assert stringify_variables({"A": 1, "B": True, "C": "x", "D": None}) == {"A": "1", "B": "true", "C": "x", "D": ""}
    with pytest.raises(WoodpeckerError) as caught:
        stringify_variables({"LIST": [1]})
    assert str(caught.value) == "pipeline variable LIST: the value must be a string or number, not a list"


# ---- transport: retries, timeouts, a server that is down, TLS ----------------------------------------
def test_reads_are_retried_on_5xx_with_backoff(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    server.force_answers(502, 503)
    sleeps = Sleeps()
    repo = client_for(server, sleep=sleeps, backoff=0.5).lookup_repo("acme/app")
    assert repo.full_name == "acme/app"
    assert sleeps == [0.5, 1.0]


def test_retry_after_is_honoured_and_clamped(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    server.force_answers(503, headers={"Retry-After": "2"})
    server.force_answers(503, headers={"Retry-After": "3600"})
    sleeps = Sleeps()
    client_for(server, sleep=sleeps).lookup_repo("acme/app")
    assert sleeps == [2.0, 30.0]


def test_reads_give_up_after_three_retries(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    server.force_answers(500, 500, 500, 500)
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).lookup_repo("acme/app")
    assert str(caught.value) == ("Woodpecker repository acme/app: the server failed with 500 (the reason is only in "
                                 "the Woodpecker server log)")
    assert len(server.requests) == 4


def test_a_restart_answered_5xx_is_never_sent_again(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="failure")
    server.force_answers(502, method="POST")
    with pytest.raises(WoodpeckerError):
        client_for(server).restart(Repo(repo_id, "acme/app", "main"), number)
    assert len(server.api_requests("POST")) == 1


def test_a_read_that_times_out_is_retried_then_named(fake: tuple[FakeWoodpecker, int]) -> None:
    server = fake[0]
    server.force_answers(200, 200, delay=1.0)
    sleeps = Sleeps()
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server, timeout=0.2, retries=1, sleep=sleeps).lookup_repo("acme/app")
    assert caught.value.reason == "timeout"
    assert f"{server.url} did not answer GET within 0.2 s" in str(caught.value)
    assert len(sleeps) == 1


def test_a_trigger_that_times_out_is_not_retried(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    client = client_for(server, timeout=0.2)
    repo = client.lookup_repo("acme/app")
    server.force_answers(200, delay=1.0, method="POST")
    with pytest.raises(WoodpeckerError) as caught:
        client.trigger(repo, "main")
    assert caught.value.reason == "answer_lost"
    assert "no answer came within 0.2 s, so the server may have started the pipeline" in str(caught.value)
    assert len(server.api_requests("POST")) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down(fake: tuple[FakeWoodpecker, int]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sleeps = Sleeps()
    client = WoodpeckerClient(url, TOKEN, sleep=sleeps, retries=2)
    with pytest.raises(WoodpeckerError) as caught:
        client.lookup_repo("acme/app")
    assert str(caught.value) == (f"Woodpecker repository acme/app: cannot reach the Woodpecker server at {url} "
                                 "(connection refused)")
    # A POST that never left is safe to retry as well.
    with pytest.raises(WoodpeckerError):
        client.restart(Repo(1, "acme/app", "main"), 1)
    assert len(sleeps) == 4


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # verify=False is asked for
def test_tls_is_verified_by_default_and_ca_path_is_honoured(tmp_path: pathlib.Path) -> None:
    tls = make_server_tls(tmp_path)
    with FakeWoodpecker(tls=(str(tls.server.cert_path), str(tls.server.key_path))) as server:
        server.add_user(TOKEN)
        server.add_repo("acme", "app", push=[TOKEN])
        with pytest.raises(WoodpeckerError) as caught:
            client_for(server).lookup_repo("acme/app")
        assert caught.value.reason == "tls"
        assert client_for(server, verify=str(tls.ca.cert_path)).lookup_repo("acme/app").full_name == "acme/app"
        assert client_for(server, verify=False).lookup_repo("acme/app").full_name == "acme/app"


# ---- the token --------------------------------------------------------------------------------------
def test_token_only_in_the_header_never_in_repr_or_errors(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    client = client_for(server)
    assert TOKEN not in repr(client) and TOKEN not in repr(client._session.auth)
    messages = []
    number = server.add_pipeline(repo_id, status="failure", logs={"push-image": ["x"]})
    server.add_pipeline(repo_id, status="blocked")
    run_action(client, ActionRequest(action="restart", repo="acme/app", pipeline=number, wait=False))
    run_action(client, ActionRequest(action="trigger", repo="acme/app", idempotency_key="k"))
    run_action(client, ActionRequest(action="status", repo="acme/app", pipeline=number))
    for action, kwargs in [("restart", {"pipeline": 2}), ("trigger", {"branch": "nope"}),
                           ("status", {"pipeline": 99})]:
        with pytest.raises(WoodpeckerError) as caught:
            run_action(client, ActionRequest(action=action, repo="acme/app", **kwargs))
        messages.append(str(caught.value) + repr(caught.value) + repr(caught.value.__cause__))
    assert_token_never_sent_outside_header(server)
    assert all(TOKEN not in message for message in messages)


def test_a_token_with_a_line_break_is_refused_without_echoing_it() -> None:
    with pytest.raises(WoodpeckerError) as caught:
        WoodpeckerClient("http://127.0.0.1:1", "wpt-abc\nInjected: yes")
    assert "wpt-abc" not in str(caught.value)
    assert str(caught.value) == "Woodpecker at http://127.0.0.1:1: the token is empty or contains whitespace"
    # A trailing newline (a token read from a file) is fine.
    assert WoodpeckerClient("http://127.0.0.1:1", "wpt-abc\n")._token == "wpt-abc"


def test_server_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(WoodpeckerError) as caught:
        WoodpeckerClient("https://ops:hunter2@ci.example", TOKEN)
    assert str(caught.value) == "Woodpecker server_url must not contain credentials; pass the token instead"


def test_server_url_must_be_http() -> None:
    with pytest.raises(WoodpeckerError) as caught:
        WoodpeckerClient("ci.example", TOKEN)
    assert str(caught.value) == "Woodpecker server_url 'ci.example': expected an http:// or https:// address"


# ---- answers lost, cut short or too slow: the server may have acted ----------------------------------
LOST_ANSWERS = [("drop", 0.0), ("cut", 0.0), ("slow", 1.5)]


@pytest.mark.parametrize(("kind", "delay"), LOST_ANSWERS, ids=[kind for kind, delay in LOST_ANSWERS])
def test_a_lost_trigger_answer_is_picked_up_by_its_idempotency_key(
    fake: tuple[FakeWoodpecker, int], kind: str, delay: float
) -> None:
    server, repo_id = fake
    server.fault_answer(kind, path=r"/api/repos/\d+/pipelines", delay=delay)
    client = client_for(server, timeout=0.5)
    outcome = run_action(client, ActionRequest(action="trigger", repo="acme/app", idempotency_key="incident-7"))
    assert outcome.created_new and outcome.pipeline.number == 1 and outcome.changed
    assert outcome.url == f"{server.url}/repos/{repo_id}/pipeline/1"
    assert "may have started the pipeline; it did: pipeline #1 carries idempotency key incident-7" in \
        outcome.warnings[0]
    assert len(server.api_requests("POST")) == 1 and list(server.repos[repo_id].pipelines) == [1]


@pytest.mark.parametrize(("kind", "delay"), LOST_ANSWERS, ids=[kind for kind, delay in LOST_ANSWERS])
def test_a_lost_trigger_answer_without_a_key_says_the_pipeline_may_exist(
    fake: tuple[FakeWoodpecker, int], kind: str, delay: float
) -> None:
    server, repo_id = fake
    server.fault_answer(kind, path=r"/api/repos/\d+/pipelines", delay=delay)
    with pytest.raises(WoodpeckerError) as caught:
        run_action(client_for(server, timeout=0.5), ActionRequest(action="trigger", repo="acme/app"))
    message = str(caught.value)
    assert caught.value.reason == "answer_lost"
    assert "so the server may have started the pipeline" in message
    assert "run it again with an idempotency_key so a rerun picks up what a lost answer started" in message
    assert "cannot reach" not in message
    assert len(server.api_requests("POST")) == 1


def test_a_lost_trigger_answer_with_a_key_not_yet_listed_says_a_rerun_picks_it_up(
    fake: tuple[FakeWoodpecker, int]
) -> None:
    server, repo_id = fake
    # Served before routing: the trigger is received but stored nothing, and no answer comes in time.
    server.force_answers(200, delay=1.5, method="POST")
    with pytest.raises(WoodpeckerError) as caught:
        run_action(client_for(server, timeout=0.5),
                   ActionRequest(action="trigger", repo="acme/app", idempotency_key="incident-7"))
    message = str(caught.value)
    assert caught.value.reason == "answer_lost"
    assert "no pipeline with idempotency key incident-7 is listed yet; run the task again with the same " \
           "idempotency_key" in message


@pytest.mark.parametrize(("kind", "delay"), LOST_ANSWERS, ids=[kind for kind, delay in LOST_ANSWERS])
def test_a_lost_restart_answer_finds_the_restarted_pipeline(
    fake: tuple[FakeWoodpecker, int], kind: str, delay: float
) -> None:
    server, repo_id = fake
    failed = server.add_pipeline(repo_id, status="failure")
    server.fault_answer(kind, path=rf"/api/repos/\d+/pipelines/{failed}", delay=delay)
    outcome = run_action(client_for(server, timeout=0.5),
                         ActionRequest(action="restart", repo="acme/app", pipeline=failed))
    assert outcome.created_new and outcome.pipeline.parent == failed and outcome.changed
    assert f"it did: pipeline #{outcome.pipeline.number} was restarted from #{failed}" in outcome.warnings[0]
    assert len(server.api_requests("POST")) == 1


def test_a_restart_whose_configuration_does_not_lint_is_not_a_lost_definition(
    fake: tuple[FakeWoodpecker, int]
) -> None:
    server, repo_id = fake
    lint = "[linter] steps.push-image.image: image is required"
    old = server.add_pipeline(repo_id, status="error", errors=[lint])
    server.stored(repo_id, old)["_workflows"] = {}  # a configuration that does not lint gives no steps
    server.repos[repo_id].restart_config = "lint_error"
    with pytest.raises(WoodpeckerError) as caught:
        run_action(client_for(server),
                   ActionRequest(action="restart", repo="acme/app", pipeline=old, fallback_to_trigger=True))
    error = caught.value
    assert error.reason == "config_invalid" and error.status_code == 500
    assert error.pipeline is not None and error.pipeline.parent == old and error.pipeline.status == "error"
    assert error.url == f"{server.url}/repos/{repo_id}/pipeline/{error.pipeline.number}"
    message = str(error)
    assert f"stored pipeline #{error.pipeline.number} in status error because the pipeline configuration does " \
           f"not parse or lint ({lint}) (500: failure to createPipelineItems for acme/app)" in message
    assert "definition" not in message and "blocked" not in message
    # No fallback trigger: a fresh pipeline would fail the same way until the configuration is fixed.
    assert [r.path for r in server.api_requests("POST")] == [f"/api/repos/{repo_id}/pipelines/{old}"]


def test_a_restart_of_a_declined_pipeline_says_so(fake: tuple[FakeWoodpecker, int]) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="declined")
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).restart(Repo(repo_id, "acme/app", "main"), number)
    assert caught.value.reason == "declined" and caught.value.pipeline is None
    assert str(caught.value) == (f"Woodpecker pipeline acme/app#{number} is declined and cannot be restarted (400: "
                                 "cannot restart a pipeline with status declined); trigger a new pipeline instead")


def test_a_restart_refused_by_the_configuration_service_gives_the_server_text(
    fake: tuple[FakeWoodpecker, int]
) -> None:
    server, repo_id = fake
    number = server.add_pipeline(repo_id, status="failure")
    server.repos[repo_id].restart_config = "external_fetch_error"
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).restart(Repo(repo_id, "acme/app", "main"), number)
    assert caught.value.reason == "config_service"
    assert "On fetching external pipeline config" in str(caught.value)
    assert "blocked" not in str(caught.value) and "definition" not in str(caught.value)


def test_a_1x_server_answering_204_without_storing_a_pipeline_filtered_the_trigger(make_fake: MakeFake) -> None:
    server, repo_id = make_fake(1)
    server.repos[repo_id].manual_config = "filtered"
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).trigger(Repo(repo_id, "acme/app", "main"), "main")
    assert caught.value.reason == "filtered"
    assert "nothing was started because no workflow runs for event manual (204 from a 1.x server" in \
        str(caught.value)


def test_a_1x_server_answering_204_with_a_stored_pipeline_could_not_fetch_the_configuration(
    make_fake: MakeFake
) -> None:
    server, repo_id = make_fake(1)
    server.repos[repo_id].manual_config = "fetch_error"
    with pytest.raises(WoodpeckerError) as caught:
        client_for(server).trigger(Repo(repo_id, "acme/app", "main"), "main")
    assert caught.value.reason == "config_error" and caught.value.pipeline is not None
    assert caught.value.url == f"{server.url}/repos/{repo_id}/pipeline/1"

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Woodpecker CI server for tests: real HTTP on 127.0.0.1, behaving as
/work/shared/reference/woodpecker-api.md describes (routes, permission answers, the 204 cases,
restart lineage and its known bug, timestamp spellings per major version, base64 logs).

No Woodpecker can be installed on the machines the tests run on, so this is the one stand-in the
project allows. Tests drive it directly: they seed repositories and pipelines, plan how the next
pipeline will progress (one status per GET of that pipeline, so progress never depends on time),
and read back every request it received.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import itertools
import json
import re
import ssl
import threading
import time
import typing as t
from urllib.parse import parse_qs, urlsplit

NOT_FINISHED = ("created", "pending", "running")
FAILED_STEP_STATES = ("failure", "error", "killed")

UI_HTML = b"<!DOCTYPE html><html><head><title>Woodpecker</title></head><body><div id=app></div></body></html>"


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Plan:
    """How a pipeline created by a trigger or a restart will behave.

    statuses: the status at creation, then one more per GET of that pipeline (the last one stays).
    failing_step: the step that fails when the pipeline ends in failure (default: the last step).
    logs: step name -> log lines; a None line is stored with null data; a step not named has no
    log at all (the server answers null).
    """

    statuses: list[str]
    failing_step: str | None = None
    logs: dict[str, list[str | None]] = dataclasses.field(default_factory=dict)
    # When the pipeline ends in `error`: the failing step ends in `error` with this text (as when its image
    # cannot be pulled), the steps before it succeed and the ones after are skipped.
    step_error: str | None = None


@dataclasses.dataclass
class Repo:
    id: int
    owner: str
    name: str
    default_branch: str
    branches: set[str]
    steps: list[tuple[str, str]]  # (workflow, step)
    manual_config: str = "ok"  # ok | filtered | fetch_error
    # What a restart meets when it re-reads the stored configuration: ok, lint_error (the new pipeline is
    # stored in error with the linter's messages and the server answers 500), or external_fetch_error (a
    # configuration extension failed: 400, nothing stored).
    restart_config: str = "ok"
    config_errors: list[str] = dataclasses.field(
        default_factory=lambda: ["[linter] steps.push-image.image: image is required"])
    plans: list[Plan] = dataclasses.field(default_factory=list)
    pipelines: dict[int, dict[str, t.Any]] = dataclasses.field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


class FakeWoodpecker:
    """Start with `with FakeWoodpecker() as server:`; `server.url` is the server address."""

    def __init__(self, api_version: int = 3, version: str | None = None, restart_bug: str = "200",
                 tls: tuple[str, str] | None = None) -> None:
        # api_version 0 stands for the pre-1.0 servers (owner/name paths, "builds").
        self.api_version = api_version
        self.version = version or {0: "0.15.11", 1: "1.0.5", 2: "2.8.3", 3: "3.17.0"}[api_version]
        self.restart_bug = restart_bug  # answer to restarting a pipeline whose config was never stored
        self.tls = tls  # (certificate path, key path): serve HTTPS
        self.users: dict[str, str] = {}  # token -> login
        self.perms: dict[tuple[str, int], str] = {}  # (token, repo id) -> "pull" | "push"
        self.repos: dict[int, Repo] = {}
        self.requests: list[RecordedRequest] = []
        # (method or None for any, status, delay, headers, body) served before any routing, in order
        self.forced_answers: list[tuple[str | None, int, float, dict[str, str], bytes]] = []
        # (method, path regex, kind, delay): the request is handled (a pipeline may be stored), then its
        # answer is lost ("drop": the connection closes before any byte), cut short ("cut": headers and
        # half the body), or sent late ("slow": after `delay` seconds).
        self.answer_faults: list[tuple[str, str, str, float]] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(100)
        self._clock = itertools.count(1_700_000_000, 7)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeWoodpecker:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        # A short poll interval makes stop() quick; the default half second adds up over many tests.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeWoodpecker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    # ---- set-up by tests -----------------------------------------------------------------------
    def add_user(self, token: str, login: str = "ops") -> None:
        self.users[token] = login

    def add_repo(
        self,
        owner: str,
        name: str,
        *,
        repo_id: int | None = None,
        default_branch: str = "main",
        branches: t.Iterable[str] = ("main",),
        steps: t.Iterable[tuple[str, str]] = (("build", "clone"), ("build", "push-image")),
        pull: t.Iterable[str] = (),
        push: t.Iterable[str] = (),
    ) -> int:
        with self._lock:
            rid = repo_id if repo_id is not None else len(self.repos) + 1
            self.repos[rid] = Repo(rid, owner, name, default_branch, set(branches) | {default_branch}, list(steps))
            for token in pull:
                self.perms[(token, rid)] = "pull"
            for token in push:
                self.perms[(token, rid)] = "push"
            return rid

    def plan(self, repo_id: int, statuses: list[str], failing_step: str | None = None,
             logs: dict[str, list[str | None]] | None = None, step_error: str | None = None) -> None:
        """Queue how the next pipeline created in this repository will progress."""
        with self._lock:
            self.repos[repo_id].plans.append(Plan(list(statuses), failing_step, dict(logs or {}), step_error))

    def add_pipeline(
        self,
        repo_id: int,
        *,
        status: str,
        branch: str = "main",
        event: str = "push",
        variables: dict[str, str] | None = None,
        commit: str = "c0ffee0000000000000000000000000000000001",
        parent: int = 0,
        config_stored: bool = True,
        errors: list[str] | None = None,
        failing_step: str | None = None,
        logs: dict[str, list[str | None]] | None = None,
    ) -> int:
        """Seed a pipeline in the history; answers its number."""
        with self._lock:
            repo = self.repos[repo_id]
            return self._new_pipeline(
                repo, Plan([status], failing_step, dict(logs or {})), branch=branch, event=event,
                variables=variables or {}, commit=commit, parent=parent, config_stored=config_stored,
                errors=errors or [],
            )["number"]

    def advance(self, repo_id: int, number: int, status: str, *, failing_step: str | None = None,
                step_error: str | None = None) -> None:
        """Move a pipeline to a status now (its planned progression is dropped)."""
        with self._lock:
            pipeline = self.repos[repo_id].pipelines[number]
            pipeline["_script"] = []
            if failing_step:
                pipeline["_failing_step"] = failing_step
            if step_error:
                pipeline["_step_error"] = step_error
            self._set_status(pipeline, status)

    def stored(self, repo_id: int, number: int) -> dict[str, t.Any]:
        with self._lock:
            return self.repos[repo_id].pipelines[number]

    def force_answers(self, *statuses: int, delay: float = 0.0, body: bytes = b"",
                      content_type: str | None = None, method: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        """Answer the next requests (of `method`, or any) with these statuses, empty body unless given."""
        headers = dict(headers or {})
        if content_type:
            headers["Content-Type"] = content_type
        with self._lock:
            self.forced_answers.extend((method, status, delay, headers, body) for status in statuses)

    def fault_answer(self, kind: str, *, method: str = "POST", path: str = r"/api/repos/\d+/pipelines(/\d+)?",
                     delay: float = 0.0) -> None:
        """Handle the next matching request for real, then drop, cut short or delay its answer."""
        assert kind in ("drop", "cut", "slow"), kind
        with self._lock:
            self.answer_faults.append((method, path, kind, delay))

    def take_fault(self, method: str, path: str) -> tuple[str, float] | None:
        with self._lock:
            for fault in self.answer_faults:
                if fault[0] == method and re.fullmatch(fault[1], urlsplit(path).path):
                    self.answer_faults.remove(fault)
                    return fault[2], fault[3]
        return None

    def api_requests(self, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    # ---- model ---------------------------------------------------------------------------------
    def _new_pipeline(self, repo: Repo, plan: Plan, *, branch: str, event: str, variables: dict[str, str],
                      commit: str, parent: int, config_stored: bool, errors: list[str]) -> dict[str, t.Any]:
        number = max(repo.pipelines, default=0) + 1
        workflows: dict[str, list[dict[str, t.Any]]] = {}
        if config_stored:
            for workflow, step in repo.steps:
                workflows.setdefault(workflow, []).append(
                    {"id": next(self._ids), "name": step, "state": "pending", "exit_code": 0,
                     "started": 0, "finished": 0, "error": "", "logs": plan.logs.get(step)}
                )
        pipeline: dict[str, t.Any] = {
            "id": next(self._ids), "number": number, "parent": parent, "event": event, "status": "",
            "errors": [{"type": "generic", "message": m, "is_warning": False} for m in errors],
            "branch": branch, "ref": branch if event == "manual" else f"refs/heads/{branch}",
            "commit": commit, "message": "rebuild", "author": "ops", "created": next(self._clock),
            "started": 0, "finished": 0, "variables": dict(variables), "forge_url": "",
            "_workflows": workflows, "_config_stored": config_stored,
            "_failing_step": plan.failing_step or (repo.steps[-1][1] if repo.steps else None),
            "_step_error": plan.step_error,
            "_script": list(plan.statuses[1:]),
        }
        self._set_status(pipeline, plan.statuses[0])
        repo.pipelines[number] = pipeline
        return pipeline

    def _set_status(self, pipeline: dict[str, t.Any], status: str) -> None:
        pipeline["status"] = status
        now = next(self._clock)
        if status not in ("created", "pending", "blocked") and not pipeline["started"]:
            pipeline["started"] = now
        if status not in NOT_FINISHED and status != "blocked" and not pipeline["finished"]:
            pipeline["finished"] = now
        steps = [s for children in pipeline["_workflows"].values() for s in children]
        failing_seen = False
        for index, step in enumerate(steps):
            if status in ("created", "pending", "blocked"):
                state = "pending"
            elif status == "running":
                state = "running" if index == 0 else "pending"
            elif status == "failure":
                if failing_seen:
                    state = "skipped"
                elif step["name"] == pipeline["_failing_step"]:
                    state, failing_seen = "failure", True
                else:
                    state = "success"
            elif status == "error" and pipeline.get("_step_error"):
                if failing_seen:
                    state = "skipped"
                elif step["name"] == pipeline["_failing_step"]:
                    state, failing_seen = "error", True
                    step["error"] = pipeline["_step_error"]
                else:
                    state = "success"
            elif status in ("killed", "canceled"):
                state = "killed" if step["state"] == "running" else "canceled"
            else:
                state = status  # success, error, declined, skipped, or a status the tests invent
            step["state"] = state
            step["exit_code"] = {"failure": 1, "killed": 137}.get(state, 0)
            if state not in ("pending", "skipped", "canceled") and not step["started"]:
                step["started"] = now
            if state not in ("pending", "running") and not step["finished"]:
                step["finished"] = now

    def _render(self, repo: Repo, pipeline: dict[str, t.Any], with_workflows: bool) -> dict[str, t.Any]:
        v = self.api_version
        out = {k: val for k, val in pipeline.items() if not k.startswith("_")}
        if not out["variables"]:
            del out["variables"]  # empty maps are omitted
        if v >= 2:
            out["errors"] = out["errors"] or None  # an empty list travels as null
        else:
            errors = out.pop("errors")
            out["error"] = errors[0]["message"] if errors else ""
        if v < 3:
            for name in ("created", "started", "finished"):
                out[f"{name}_at"] = out.pop(name)
        if with_workflows and pipeline["_workflows"]:
            workflows = []
            for pid, (name, children) in enumerate(pipeline["_workflows"].items(), start=1):
                steps = []
                for ppid, step in enumerate(children, start=1):
                    rendered = {"id": step["id"], "pid": pid * 10 + ppid, "ppid": pid, "name": step["name"],
                                "state": step["state"], "error": step["error"], "exit_code": step["exit_code"],
                                "type": "commands"}
                    rendered.update(self._step_times(step))
                    steps.append(rendered)
                states = [s["state"] for s in children]
                wf_state = next((s for s in ("failure", "error", "killed", "running", "pending") if s in states),
                                states[0] if states else "pending")
                workflow = {"id": next(self._ids), "pid": pid, "name": name, "state": wf_state, "error": "",
                            "children": steps}
                workflow.update(self._step_times({"started": children[0]["started"],
                                                  "finished": children[-1]["finished"]}))
                workflows.append(workflow)
            out["workflows"] = workflows
        return out

    def _step_times(self, step: dict[str, t.Any]) -> dict[str, int]:
        if self.api_version >= 3:
            return {"started": step["started"], "finished": step["finished"]}
        return {"start_time": step["started"], "end_time": step["finished"]}

    def _find_step(self, repo: Repo, number: int, step_id: int) -> dict[str, t.Any] | None:
        pipeline = repo.pipelines.get(number)
        if pipeline is None:
            return None
        for children in pipeline["_workflows"].values():
            for step in children:
                if step["id"] == step_id:
                    return step
        return None

    # ---- request handling ----------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(raw_path)
        with self._lock:
            self.requests.append(RecordedRequest(method, parts.path, parts.query, headers, body))
            forced = next((f for f in self.forced_answers if f[0] in (None, method)), None)
            if forced is not None:
                self.forced_answers.remove(forced)
        if forced is not None:
            _method, status, delay, headers, payload = forced
            if delay:
                time.sleep(delay)
            return status, headers, payload
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            return self._route(method, parts.path, query, headers, body)

    def _route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        if path == "/healthz":
            return 204, {}, b""
        if path == "/version" and method == "GET":
            return _json({"source": "https://github.com/woodpecker-ci/woodpecker", "version": self.version})
        if not path.startswith("/api/"):
            return _html()

        token = None
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
        if token is None or token not in self.users:
            return 401, {}, b""
        if path == "/api/user" and method == "GET":
            return _json({"id": 1, "login": self.users[token]})

        if self.api_version == 0:
            return self._route_pre_1_0(method, path, token)

        match = re.fullmatch(r"/api/repos/lookup/(.+)", path)
        if match and method == "GET":
            repo = next((r for r in self.repos.values() if r.full_name == match.group(1)), None)
            if repo is None or not self._can(token, repo, "pull"):
                return 404, {}, b""
            return _json(self._repo_json(repo))

        match = re.fullmatch(r"/api/repos/([^/]+)(/.*)?", path)
        if not match:
            return _html()
        if not match.group(1).isdigit():
            return 400, {}, b""
        repo = self.repos.get(int(match.group(1)))
        rest = match.group(2) or ""
        need = "push" if method == "POST" else "pull"
        if repo is None or not self._can(token, repo, need):
            return 404, {}, b""

        if rest == "" and method == "GET":
            return _json(self._repo_json(repo))
        if rest == "/pipelines" and method == "GET":
            return self._list(repo, query)
        if rest == "/pipelines" and method == "POST":
            return self._trigger(repo, body)
        match = re.fullmatch(r"/pipelines/(\d+)(/cancel)?", rest)
        if match:
            pipeline = repo.pipelines.get(int(match.group(1)))
            if pipeline is None:
                return 404, {}, b""
            if method == "GET" and not match.group(2):
                if pipeline["_script"]:
                    self._set_status(pipeline, pipeline["_script"].pop(0))
                return _json(self._render(repo, pipeline, with_workflows=True))
            if method == "POST" and match.group(2):
                if pipeline["status"] in NOT_FINISHED or pipeline["status"] == "blocked":
                    pipeline["_script"] = []
                    running = pipeline["status"] == "running"
                    self._set_status(pipeline, "killed" if running or self.api_version < 3 else "canceled")
                return 204, {}, b""
            if method == "POST":
                return self._restart(repo, pipeline)
        match = re.fullmatch(r"/logs/(\d+)/(\d+)", rest)
        if match and method == "GET":
            step = self._find_step(repo, int(match.group(1)), int(match.group(2)))
            if step is None:
                return 404, {}, b""
            if not step["logs"]:
                return _json(None)
            entries = []
            for line_no, line in enumerate(step["logs"]):
                data = None if line is None else base64.b64encode(line.encode()).decode()
                entries.append({"id": next(self._ids), "step_id": step["id"], "time": line_no, "line": line_no,
                                "data": data, "type": 0})
            return _json(entries)
        return _html()

    def _route_pre_1_0(self, method: str, path: str, token: str) -> tuple[int, dict[str, str], bytes]:
        match = re.fullmatch(r"/api/repos/([^/]+)/([^/]+)", path)
        if match and method == "GET" and match.group(1) != "lookup":
            repo = next((r for r in self.repos.values() if r.full_name == f"{match.group(1)}/{match.group(2)}"),
                        None)
            if repo is None or not self._can(token, repo, "pull"):
                return 404, {}, b""
            return _json(self._repo_json(repo))
        if re.fullmatch(r"/api/repos/lookup/.*|/api/repos/\d+(/.*)?", path):
            return 404, {}, b""
        return _html()

    def _can(self, token: str, repo: Repo, need: str) -> bool:
        granted = self.perms.get((token, repo.id))
        return granted == "push" or (granted == "pull" and need == "pull")

    def _repo_json(self, repo: Repo) -> dict[str, t.Any]:
        return {"id": repo.id, "forge_remote_id": str(repo.id), "owner": repo.owner, "name": repo.name,
                "full_name": repo.full_name, "default_branch": repo.default_branch, "active": True,
                "private": True, "visibility": "private"}

    def _list(self, repo: Repo, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        try:
            page = max(1, int(query.get("page", "1")))
            per_page = min(50, max(1, int(query.get("perPage", "50"))))
        except ValueError:
            return 400, {}, b""
        items = sorted(repo.pipelines.values(), key=lambda p: p["number"], reverse=True)
        if self.api_version >= 3:  # v1 and v2 ignore these filters
            for key in ("branch", "event", "status"):
                if key in query:
                    items = [p for p in items if p[key] == query[key]]
        chunk = items[(page - 1) * per_page: page * per_page]
        return _json([self._render(repo, p, with_workflows=False) for p in chunk])

    def _trigger(self, repo: Repo, body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return 400, {}, b""
        if not isinstance(payload, dict) or not isinstance(payload.get("variables", {}), dict):
            return 400, {}, b""
        branch = payload.get("branch") or repo.default_branch
        if branch not in repo.branches:
            return 500, {}, b""
        variables = {str(k): str(v) for k, v in (payload.get("variables") or {}).items()}
        if repo.manual_config == "filtered":
            # The Pipeline-Filtered header came with 2.0; a 1.x server answers a bare 204.
            return 204, ({"Pipeline-Filtered": "true"} if self.api_version >= 2 else {}), b""
        if repo.manual_config == "fetch_error":
            self._new_pipeline(repo, Plan(["error"]), branch=branch, event="manual", variables=variables,
                               commit=_commit_for(branch), parent=0, config_stored=False,
                               errors=["could not load config from forge: 500 Internal Server Error"])
            return 204, {}, b""
        plan = repo.plans.pop(0) if repo.plans else Plan(["pending"])
        pipeline = self._new_pipeline(repo, plan, branch=branch, event="manual", variables=variables,
                                      commit=_commit_for(branch), parent=0, config_stored=True, errors=[])
        return _json(self._render(repo, pipeline, with_workflows=True))

    def _restart(self, repo: Repo, old: dict[str, t.Any]) -> tuple[int, dict[str, str], bytes]:
        if old["status"] in ("blocked", "declined"):
            return _text(400, f"cannot restart a pipeline with status {old['status']}")
        if repo.restart_config == "external_fetch_error":
            return _text(400, "On fetching external pipeline config: Post \"https://config.example/\": "
                              "context deadline exceeded")
        common = {"branch": old["branch"], "event": old["event"], "variables": old["variables"],
                  "commit": old["commit"], "parent": old["number"]}
        if not old["_config_stored"]:
            if self.restart_bug in ("404", "500"):
                return int(self.restart_bug), {}, b""
            pipeline = self._new_pipeline(repo, Plan(["error"]), config_stored=False,
                                          errors=["pipeline definition not found"], **common)
            return _json(self._render(repo, pipeline, with_workflows=True))
        if repo.restart_config == "lint_error":
            # The new pipeline is stored first, then the configuration fails to compile: it stays in error
            # with the linter's messages, and the answer is a plain-text 500.
            self._new_pipeline(repo, Plan(["error"]), config_stored=True, errors=list(repo.config_errors), **common)
            repo.pipelines[max(repo.pipelines)]["_workflows"] = {}
            return _text(500, f"failure to createPipelineItems for {repo.full_name}")
        plan = repo.plans.pop(0) if repo.plans else Plan(["pending"])
        pipeline = self._new_pipeline(repo, plan, config_stored=True, errors=[], **common)
        return _json(self._render(repo, pipeline, with_workflows=True))


def _text(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, message.encode()


def _commit_for(branch: str) -> str:
    return (branch.encode().hex() + "0" * 40)[:40]


def _json(value: t.Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(value).encode()


def _html() -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "text/html; charset=utf-8"}, UI_HTML


class _Handler(http.server.BaseHTTPRequestHandler):
    fake: FakeWoodpecker
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, payload = self.fake.handle(self.command, self.path, headers, body)
        fault = self.fake.take_fault(self.command, self.path)
        if fault is not None and fault[0] == "drop":
            self.close_connection = True
            return  # handled, stored, and no answer at all
        if fault is not None and fault[0] == "slow":
            time.sleep(fault[1])
        self.send_response(status)
        for key, value in out_headers.items():
            self.send_header(key, value)
        if status != 204:  # a 204 carries no body and no Content-Length
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault is not None and fault[0] == "cut":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


# A hang guard for the pipeline thread, not an assertion on time.
PIPELINE_GUARD_SECONDS = 300


class PlayedPipeline(threading.Thread):
    """A CI pipeline played by a thread of the caller: waits until the playbook has started a pipeline in ``repo_id`` (numbered above ``after``) and read
    it at least once (it is waiting), runs ``build`` (the push), then sets the pipeline to ``final_status``."""

    def __init__(self, fake: FakeWoodpecker, repo_id: int, build: t.Callable[[], None], final_status: str = "success",
                 after: int = 0):
        super().__init__(daemon=True)
        self.fake, self.repo_id, self.build, self.final_status = fake, repo_id, build, final_status
        self.after = after
        self.error: BaseException | None = None
        self.number: int | None = None

    def _polled(self, number: int) -> bool:
        path = f"/api/repos/{self.repo_id}/pipelines/{number}"
        return any(request.path == path for request in self.fake.api_requests("GET"))

    def run(self) -> None:
        try:
            deadline = time.monotonic() + PIPELINE_GUARD_SECONDS
            while time.monotonic() < deadline:
                pipelines = self.fake.repos[self.repo_id].pipelines
                if pipelines and max(pipelines) > self.after and self._polled(max(pipelines)):
                    self.number = max(pipelines)
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the playbook never started and polled a pipeline")
            self.build()
            self.fake.advance(self.repo_id, self.number, self.final_status)
        except BaseException as error:  # reported by the test
            self.error = error

    def __enter__(self) -> PlayedPipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join(timeout=PIPELINE_GUARD_SECONDS)

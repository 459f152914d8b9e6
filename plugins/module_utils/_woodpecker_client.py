# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Woodpecker CI API client (servers 1.0 and later) and the pipeline actions built on it.

Pure Python over `requests`; nothing here imports Ansible, and every failure a user can cause is
raised as one `WoodpeckerError` whose text is a single sentence naming the repository or pipeline.
The bearer token only ever travels in the Authorization header: Woodpecker turns unknown query
parameters of a restart into build environment variables, so a token in a URL would leak into CI.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import time
import typing as t
from urllib.parse import quote, urlsplit

try:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
except ImportError as exc:  # the module reports this with missing_required_lib
    REQUESTS_IMPORT_ERROR: t.Optional[ImportError] = exc
else:
    REQUESTS_IMPORT_ERROR = None

NOT_FINISHED = frozenset({"created", "pending", "running"})
BLOCKED = "blocked"
FINISHED = frozenset({"success", "failure", "killed", "error", "declined", "skipped", "canceled"})
FAILED = frozenset({"failure", "error", "killed"})
# Pipeline variables this collection sets, so later runs can recognise the pipelines it started.
IDEMPOTENCY_VARIABLE = "SELFHOSTED_REGISTRY_IDEMPOTENCY_KEY"
RESTART_OF_VARIABLE = "SELFHOSTED_REGISTRY_RESTART_OF"
DEFINITION_NOT_FOUND = "pipeline definition not found"
PER_PAGE_MAX = 50
USER_AGENT = "selfhosted.registry-woodpecker-client"
# Log entry types that carry output lines (0 stdout, 1 stderr); 2 and up are exit codes and metadata.
_OUTPUT_LOG_TYPES = frozenset({0, 1, None})


class WoodpeckerError(Exception):
    """One sentence naming the object; `reason` is a short machine-readable cause."""

    def __init__(self, message: str, *, reason: str = "error", status_code: int | None = None,
                 pipeline: Pipeline | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status_code = status_code
        # A pipeline the server stored although the request failed (and its page), so callers can report it.
        self.pipeline = pipeline
        self.url = url


@dataclasses.dataclass(frozen=True)
class Repo:
    id: int
    full_name: str
    default_branch: str


@dataclasses.dataclass(frozen=True)
class Step:
    workflow: str
    name: str
    id: int
    state: str
    exit_code: int | None
    started: int | None
    finished: int | None
    error: str

    def as_dict(self) -> dict[str, t.Any]:
        return {"workflow": self.workflow, "name": self.name, "id": self.id, "state": self.state,
                "exit_code": self.exit_code, "started": self.started, "finished": self.finished,
                "error": self.error}


@dataclasses.dataclass(frozen=True)
class Pipeline:
    number: int
    parent: int
    status: str
    event: str
    branch: str
    commit: str
    created_at: int | None
    started_at: int | None
    finished_at: int | None
    errors: tuple[str, ...]
    variables: dict[str, str]
    steps: tuple[Step, ...]
    raw: dict[str, t.Any]

    @property
    def finished(self) -> bool:
        # Anything not known to be finished (including a status added by a later release) is still running.
        return self.status in FINISHED

    @property
    def success(self) -> bool:
        return self.status == "success"

    @property
    def failed_step(self) -> Step | None:
        for step in self.steps:
            if step.state in ("failure", "error"):
                return step
        for step in self.steps:
            if step.exit_code not in (None, 0):
                return step
        return None


def _timestamp(payload: t.Mapping[str, t.Any], *names: str) -> int | None:
    # v3 says created/started/finished; earlier releases created_at/... and, for steps, start_time/end_time.
    for name in names:
        value = payload.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value) or None
    return None


def _errors(payload: t.Mapping[str, t.Any]) -> tuple[str, ...]:
    # v2+ send errors[] (often null); v1 sent a single `error` string.
    found: list[str] = []
    errors = payload.get("errors")
    if isinstance(errors, list):
        for item in errors:
            if isinstance(item, dict) and item.get("message"):
                found.append(str(item["message"]))
            elif isinstance(item, str) and item:
                found.append(item)
    legacy = payload.get("error")
    if isinstance(legacy, str) and legacy and legacy not in found:
        found.append(legacy)
    return tuple(found)


def _int(value: t.Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def parse_pipeline(payload: t.Any, what: str) -> Pipeline:
    """Build a Pipeline from a server payload; a payload without a number is a bad answer."""
    if not isinstance(payload, dict) or not isinstance(payload.get("number"), int):
        raise WoodpeckerError(f"{what}: the server answered with something that is not a pipeline",
                              reason="bad_response")
    steps: list[Step] = []
    for workflow in payload.get("workflows") or []:
        if not isinstance(workflow, dict):
            continue
        for child in workflow.get("children") or []:
            if not isinstance(child, dict):
                continue
            exit_code = child.get("exit_code")
            steps.append(Step(
                workflow=str(workflow.get("name") or ""),
                name=str(child.get("name") or ""),
                id=_int(child.get("id")),
                state=str(child.get("state") or ""),
                exit_code=exit_code if isinstance(exit_code, int) else None,
                started=_timestamp(child, "started", "start_time"),
                finished=_timestamp(child, "finished", "end_time"),
                error=str(child.get("error") or ""),
            ))
    variables = payload.get("variables")
    return Pipeline(
        number=payload["number"],
        parent=_int(payload.get("parent")),
        status=str(payload.get("status") or ""),
        event=str(payload.get("event") or ""),
        branch=str(payload.get("branch") or ""),
        commit=str(payload.get("commit") or ""),
        created_at=_timestamp(payload, "created", "created_at"),
        started_at=_timestamp(payload, "started", "started_at"),
        finished_at=_timestamp(payload, "finished", "finished_at"),
        errors=_errors(payload),
        variables={str(k): str(v) for k, v in variables.items()} if isinstance(variables, dict) else {},
        steps=tuple(steps),
        raw=payload,
    )


def stringify_variables(variables: t.Mapping[str, t.Any] | None) -> dict[str, str]:
    """Woodpecker variables are strings; scalars are converted, anything nested is refused."""
    result: dict[str, str] = {}
    for key, value in (variables or {}).items():
        if isinstance(value, bool):
            result[str(key)] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            result[str(key)] = str(value)
        elif value is None:
            result[str(key)] = ""
        else:
            raise WoodpeckerError(f"pipeline variable {key}: the value must be a string or number, "
                                  f"not a {type(value).__name__}", reason="bad_input")
    return result


def decode_log(entries: t.Any) -> list[str]:
    """Turn the step log answer (a list of entries with base64 `data`, or null) into text lines."""
    lines: list[str] = []
    for entry in entries or []:
        if not isinstance(entry, dict) or entry.get("type") not in _OUTPUT_LOG_TYPES:
            continue
        data = entry.get("data")
        if not data:
            lines.append("")
            continue
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError, TypeError):
            text = "[log line that is not valid base64]"
        lines.extend(text.rstrip("\n").split("\n"))
    return lines


def _never_sent(exc: requests.exceptions.RequestException) -> bool:
    """True when the connection failed before any byte of the request could reach the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


class _BearerAuth:
    """Adds the token per request; set as session auth so ~/.netrc can never replace it."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<token hidden>)"


class WoodpeckerClient:
    """One pooled session to one Woodpecker server; every request has a timeout."""

    def __init__(self, server_url: str, token: str, *, verify: bool | str = True, timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5,
                 sleep: t.Callable[[float], None] = time.sleep) -> None:
        self.server_url = server_url.rstrip("/")
        if "@" in urlsplit(self.server_url).netloc:
            # Said without the address: it carries a password.
            raise WoodpeckerError("Woodpecker server_url must not contain credentials; pass the token instead",
                                  reason="bad_input")
        if not re.match(r"^https?://[^/]", self.server_url):
            raise WoodpeckerError(f"Woodpecker server_url {self.server_url!r}: expected an http:// or https:// "
                                  "address", reason="bad_input")
        token = (token or "").strip()  # tokens read from files often end in a newline
        if not token or any(c.isspace() for c in token):
            # The header would be refused by requests with the value quoted in the message: never show it.
            raise WoodpeckerError(f"Woodpecker at {self.server_url}: the token is empty or contains whitespace",
                                  reason="bad_input")
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._session = requests.Session()
        self._session.auth = _BearerAuth(token)
        self._verify = verify
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.headers["Accept"] = "application/json"
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"WoodpeckerClient(server_url={self.server_url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> WoodpeckerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- names and addresses -------------------------------------------------------------------
    def pipeline_url(self, repo: Repo, number: int) -> str:
        """The pipeline's page in the Woodpecker web UI."""
        return f"{self.server_url}/repos/{repo.id}/pipeline/{number}"

    @staticmethod
    def describe(repo: Repo, number: int | None = None) -> str:
        """How messages name a repository or one of its pipelines."""
        if number is None:
            return f"Woodpecker repository {repo.full_name}"
        return f"Woodpecker pipeline {repo.full_name}#{number}"

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "********") if self._token else text

    def _error(self, message: str, **kwargs: t.Any) -> WoodpeckerError:
        return WoodpeckerError(self._redact(message), **kwargs)

    # ---- transport -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, what: str, *, params: dict[str, t.Any] | None = None,
                 json_body: t.Any = None, api: bool = True) -> requests.Response:
        url = f"{self.server_url}/api{path}" if api else f"{self.server_url}{path}"
        attempt = 0
        while True:
            attempt += 1
            retry_delay = self.backoff * (2 ** (attempt - 1))
            try:
                response = self._session.request(
                    method, url, params=params, json=json_body, timeout=self.timeout,
                    # Per request: a session-level CA path loses to REQUESTS_CA_BUNDLE from the environment.
                    verify=self._verify,
                    # A redirected POST would be replayed as a GET; only reads follow redirects.
                    allow_redirects=method == "GET",
                )
            except requests.exceptions.SSLError as exc:
                raise self._error(f"{what}: the TLS connection to {self.server_url} failed (certificate not trusted, "
                                  "or the server does not speak TLS); set ca_path to the CA that signed its "
                                  "certificate", reason="tls") from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                # Reads are retried on any connection trouble. A trigger or restart is retried only when
                # the connection failed before the request left: once the server may have received it,
                # sending it again could start a second pipeline.
                if attempt <= self.retries and (method == "GET" or _never_sent(exc)):
                    self._sleep(retry_delay)
                    continue
                if method != "GET" and not _never_sent(exc):
                    raise self._answer_lost(what, _lost_cause(exc, self.timeout)) from exc
                if isinstance(exc, requests.exceptions.Timeout) and not _never_sent(exc):
                    raise self._error(f"{what}: {self.server_url} did not answer {method} within {self.timeout:g} s",
                                      reason="timeout") from exc
                raise self._error(f"{what}: cannot reach the Woodpecker server at {self.server_url} "
                                  f"({_connection_reason(exc)})", reason="unreachable") from exc
            except requests.exceptions.RequestException as exc:
                if method != "GET":
                    # The body of the answer was cut short: the server received the request and acted on it.
                    raise self._answer_lost(what, "its answer was cut short") from exc
                raise self._error(f"{what}: request to {self.server_url} failed ({type(exc).__name__})",
                                  reason="unreachable") from exc
            if response.status_code >= 500 and method == "GET" and attempt <= self.retries:
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    retry_delay = min(float(retry_after), 30.0)
                response.close()
                self._sleep(retry_delay)
                continue
            return response

    def _answer_lost(self, what: str, cause: str) -> WoodpeckerError:
        # Callers look for the pipeline the server may have started and, failing that, say how to find it.
        return self._error(f"{what}: the request reached {self.server_url} but {cause}, so the server may have "
                           "started the pipeline", reason="answer_lost")

    def _json(self, response: requests.Response, what: str) -> t.Any:
        content_type = response.headers.get("Content-Type", "")
        if "json" not in content_type.lower():
            request = response.request
            path = (request.path_url if request is not None else "").split("?")[0]
            raise self._error(
                f"{what}: this does not look like a Woodpecker API at {self.server_url} "
                f"({path} answered {response.status_code} with {content_type.split(';')[0] or 'no content type'}, "
                "not JSON; check server_url)", reason="not_woodpecker", status_code=response.status_code)
        try:
            return response.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python parses
            raise self._error(f"{what}: the server answered with malformed JSON", reason="bad_response",
                              status_code=response.status_code) from None

    def _status_error(self, response: requests.Response, what: str, permission: str) -> WoodpeckerError:
        code = response.status_code
        body = (response.text or "").strip()
        detail = ""
        if body and "<html" not in body[:200].lower():
            detail = f": {' '.join(body.split())[:200]}"
        if code == 401:
            return self._error(f"{what}: Woodpecker at {self.server_url} rejected the token (401); it is missing, "
                               "expired or revoked", reason="unauthorized", status_code=code)
        if code == 404:
            return self._error(f"{what}: not found, or the token lacks {permission} permission (404)",
                               reason="not_found", status_code=code)
        if code == 400:
            return self._error(f"{what}: the server refused the request (400){detail}", reason="bad_request",
                               status_code=code)
        if code >= 500:
            detail = detail or " (the reason is only in the Woodpecker server log)"
            return self._error(f"{what}: the server failed with {code}{detail}", reason="server_error",
                               status_code=code)
        return self._error(f"{what}: unexpected answer {code}{detail}", reason="unexpected", status_code=code)

    def _get_json(self, path: str, what: str, params: dict[str, t.Any] | None = None) -> t.Any:
        response = self._request("GET", path, what, params=params)
        if response.status_code != 200:
            raise self._status_error(response, what, "pull")
        return self._json(response, what)

    # ---- server ----------------------------------------------------------------------------------
    def version(self) -> str | None:
        """The server's version string, or None when /version does not answer JSON."""
        what = f"Woodpecker at {self.server_url}"
        response = self._request("GET", "/version", what, api=False)
        if response.status_code != 200 or "json" not in response.headers.get("Content-Type", ""):
            return None
        try:
            payload = response.json()
        except (ValueError, RecursionError):
            return None
        version = payload.get("version") if isinstance(payload, dict) else None
        return str(version) if version else None

    def _refuse_pre_1_0(self, cause: WoodpeckerError, full_name: str | None = None) -> None:
        """Called when a 1.0+ repository route failed: say so plainly if the server predates 1.0.

        /version tells for released servers; a development build ("next-...") is recognised by the
        pre-1.0 route `/api/repos/{owner}/{name}` answering the repository itself.
        """
        try:
            version = self.version()
        except WoodpeckerError:
            return
        match = re.match(r"v?(\d+)\.", version or "")
        if match:
            old = int(match.group(1)) < 1
        elif full_name:
            old = self._answers_old_repo_route(full_name)
        else:
            old = False
        if old:
            raise self._error(f"Woodpecker at {self.server_url} runs version {version or 'unknown'}, older than 1.0 "
                              "(owner/name paths and 'builds'); such servers are not supported, upgrade the server "
                              "to 1.0 or later", reason="unsupported_version") from cause

    def _answers_old_repo_route(self, full_name: str) -> bool:
        path = "/repos/" + "/".join(quote(part, safe="") for part in full_name.split("/"))
        try:
            response = self._request("GET", path, f"Woodpecker repository {full_name}")
        except WoodpeckerError:
            return False
        if response.status_code != 200 or "json" not in response.headers.get("Content-Type", ""):
            return False
        try:
            payload = response.json()
        except (ValueError, RecursionError):
            return False
        return isinstance(payload, dict) and payload.get("full_name") == full_name

    # ---- repositories ----------------------------------------------------------------------------
    def lookup_repo(self, full_name: str) -> Repo:
        what = f"Woodpecker repository {full_name}"
        if not re.fullmatch(r"[^/\s]+(/[^/\s]+)+", full_name):
            raise self._error(f"{what}: expected owner/name", reason="bad_input")
        # The route takes the name with its raw slashes; each segment is quoted on its own.
        path = "/repos/lookup/" + "/".join(quote(part, safe="") for part in full_name.split("/"))
        try:
            return self._repo_from(self._get_json(path, what), what)
        except WoodpeckerError as exc:
            if exc.reason in ("not_found", "not_woodpecker"):
                self._refuse_pre_1_0(exc, full_name)
            raise

    def get_repo(self, repo_id: int) -> Repo:
        what = f"Woodpecker repository id {repo_id}"
        try:
            return self._repo_from(self._get_json(f"/repos/{int(repo_id)}", what), what)
        except WoodpeckerError as exc:
            if exc.reason in ("not_found", "not_woodpecker"):
                self._refuse_pre_1_0(exc)
            raise

    def _repo_from(self, payload: t.Any, what: str) -> Repo:
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), int):
            raise self._error(f"{what}: the server answered with something that is not a repository",
                              reason="bad_response")
        return Repo(id=payload["id"], full_name=str(payload.get("full_name") or payload["id"]),
                    default_branch=str(payload.get("default_branch") or ""))

    # ---- pipelines -------------------------------------------------------------------------------
    def get_pipeline(self, repo: Repo, number: int) -> Pipeline:
        what = self.describe(repo, number)
        return parse_pipeline(self._get_json(f"/repos/{repo.id}/pipelines/{int(number)}", what), what)

    def _list_page(self, repo: Repo, page: int, per_page: int, filters: t.Mapping[str, str | None]
                   ) -> list[Pipeline]:
        """One page as the server sends it, newest first (filters are sent; v1/v2 ignore them)."""
        what = self.describe(repo)
        params: dict[str, t.Any] = {"page": page, "perPage": min(per_page, PER_PAGE_MAX)}
        params.update({k: v for k, v in filters.items() if v})
        payload = self._get_json(f"/repos/{repo.id}/pipelines", what, params)
        if payload is None:
            return []
        if not isinstance(payload, list):
            raise self._error(f"{what}: the pipeline list is not a list", reason="bad_response")
        return [parse_pipeline(item, what) for item in payload]

    @staticmethod
    def _matches(pipeline: Pipeline, filters: t.Mapping[str, str | None]) -> bool:
        return all(not wanted or getattr(pipeline, key) == wanted for key, wanted in filters.items())

    def list_pipelines(self, repo: Repo, *, branch: str | None = None, event: str | None = None,
                       status: str | None = None, page: int = 1, per_page: int = PER_PAGE_MAX) -> list[Pipeline]:
        """One page, newest first. v3 filters on the server; v1/v2 ignore filters, so they apply here too."""
        filters = {"branch": branch, "event": event, "status": status}
        return [p for p in self._list_page(repo, page, per_page, filters) if self._matches(p, filters)]

    def iter_pipelines(self, repo: Repo, *, max_pages: int = 2, branch: str | None = None,
                       event: str | None = None, status: str | None = None) -> t.Iterator[Pipeline]:
        """Newest first over up to max_pages pages of 50, stopping at a short or repeated page."""
        filters = {"branch": branch, "event": event, "status": status}
        seen: set[int] = set()
        for page in range(1, max_pages + 1):
            fresh = self._list_page(repo, page, PER_PAGE_MAX, filters)
            if not fresh or all(p.number in seen for p in fresh):
                return  # the end, or a server that ignores `page` (which would loop forever)
            for pipeline in fresh:
                if pipeline.number not in seen:
                    seen.add(pipeline.number)
                    if self._matches(pipeline, filters):
                        yield pipeline
            if len(fresh) < PER_PAGE_MAX:
                return

    def latest_number(self, repo: Repo) -> int:
        what = self.describe(repo)
        payload = self._get_json(f"/repos/{repo.id}/pipelines", what, {"page": 1, "perPage": 1})
        items = payload if isinstance(payload, list) else []
        numbers = [item.get("number") for item in items if isinstance(item, dict)]
        return max((n for n in numbers if isinstance(n, int)), default=0)

    def trigger(self, repo: Repo, branch: str, variables: t.Mapping[str, str] | None = None) -> Pipeline:
        """Start a manual pipeline; raises with reason `filtered` or `config_error` for the two 204 answers."""
        what = f"{self.describe(repo)}, manual pipeline on branch {branch}"
        before = self.latest_number(repo)
        response = self._request("POST", f"/repos/{repo.id}/pipelines", what,
                                 json_body={"branch": branch, "variables": dict(variables or {})})
        if response.status_code == 200:
            return parse_pipeline(self._json(response, what), what)
        if response.status_code == 204:
            if response.headers.get("Pipeline-Filtered", "").lower() == "true":
                raise self._error(
                    f"{what}: nothing was started because no workflow runs for event manual (204 Pipeline-Filtered; "
                    "the configuration has no workflow whose `when` allows manual, the commit says [skip ci], "
                    "or there is no configuration)", reason="filtered", status_code=204)
            return self._raise_config_error(repo, branch, before, what)
        if response.status_code >= 500:
            raise self._error(f"{what}: the server failed to start it ({response.status_code}); the branch may not "
                              "exist, the reason is only in the Woodpecker server log", reason="server_error",
                              status_code=response.status_code)
        raise self._status_error(response, what, "push")

    def _raise_config_error(self, repo: Repo, branch: str, before: int, what: str) -> t.NoReturn:
        # 204 without Pipeline-Filtered: fetching the configuration failed; the server stored a pipeline in
        # `error` anyway. It is the newest manual pipeline on the branch numbered above `before`.
        stored: Pipeline | None = None
        try:
            for candidate in self.iter_pipelines(repo, max_pages=1, branch=branch, event="manual"):
                if candidate.number <= before:
                    break
                if candidate.status == "error":
                    stored = self.get_pipeline(repo, candidate.number)
                    break
        except WoodpeckerError:
            stored = None
        if stored is None:
            if self._major_version() == 1:
                # 1.x servers predate the Pipeline-Filtered header: a bare 204 that stored nothing is a filter.
                raise self._error(
                    f"{what}: nothing was started because no workflow runs for event manual (204 from a 1.x server, "
                    "which does not send Pipeline-Filtered, and no pipeline was stored; the configuration has no "
                    "workflow whose `when` allows manual, the commit says [skip ci], or there is no configuration)",
                    reason="filtered", status_code=204)
            raise self._error(f"{what}: nothing was started because the server could not fetch the pipeline "
                              "configuration (204 without Pipeline-Filtered); the reason is in the Woodpecker server "
                              "log", reason="config_error", status_code=204)
        reason = f": {stored.errors[0]}" if stored.errors else ""
        raise self._error(f"{what}: the server could not fetch the pipeline configuration and stored pipeline "
                          f"#{stored.number} in status {stored.status}{reason}", reason="config_error",
                          status_code=204, pipeline=stored, url=self.pipeline_url(repo, stored.number))

    def _major_version(self) -> int | None:
        try:
            match = re.match(r"v?(\d+)\.", self.version() or "")
        except WoodpeckerError:
            return None
        return int(match.group(1)) if match else None

    def restart(self, repo: Repo, number: int) -> Pipeline:
        """Restart: the answer is a new pipeline with a new number whose parent is `number`."""
        what = self.describe(repo, number)
        before = self.latest_number(repo)
        # No query string at all: the server turns query parameters into build environment variables.
        response = self._request("POST", f"/repos/{repo.id}/pipelines/{int(number)}", what)
        if response.status_code in (400, 500):
            self._raise_restart_refused(repo, number, before, response, what)
        if response.status_code != 200:
            raise self._status_error(response, what, "push")
        new = parse_pipeline(self._json(response, what), what)
        if new.status == "error" and any(DEFINITION_NOT_FOUND in e.lower() for e in new.errors):
            raise self._error(f"{what}: the restart created pipeline #{new.number} already in error ("
                              f"{DEFINITION_NOT_FOUND})", reason="definition_not_found", status_code=200, pipeline=new,
                              url=self.pipeline_url(repo, new.number))
        return new

    def _raise_restart_refused(self, repo: Repo, number: int, before: int, response: requests.Response,
                               what: str) -> t.NoReturn:
        """A 400 or 500 to a restart, explained from the server's text, the new pipeline it may have stored
        anyway (servers store it before compiling the configuration), and the old pipeline's state."""
        code = response.status_code
        said = _server_text(response)
        said_part = f" ({code}: {said})" if said else f" ({code})"
        try:
            stored = self.find_child(repo, number, above=before)
            old: Pipeline | None = self.get_pipeline(repo, number)
        except WoodpeckerError:
            stored, old = None, None
        if stored is not None:
            stored = self.get_pipeline(repo, stored.number)
            errors = "; ".join(stored.errors) or "no error text"
            if any(DEFINITION_NOT_FOUND in e.lower() for e in stored.errors):
                raise self._error(f"{what}: the restart created pipeline #{stored.number} already in error "
                                  f"({DEFINITION_NOT_FOUND}){said_part}", reason="definition_not_found",
                                  status_code=code, pipeline=stored, url=self.pipeline_url(repo, stored.number))
            raise self._error(
                f"{what}: the restart stored pipeline #{stored.number} in status {stored.status} because the "
                f"pipeline configuration does not parse or lint ({errors}){said_part}; a restart reuses that "
                "configuration, so fix it on the branch and trigger a new pipeline", reason="config_invalid",
                status_code=code, pipeline=stored, url=self.pipeline_url(repo, stored.number))
        if old is not None and old.status in (BLOCKED, "declined"):
            advice = "approve or decline it first" if old.status == BLOCKED else "trigger a new pipeline instead"
            raise self._error(f"{what} is {old.status} and cannot be restarted{said_part}; {advice}",
                              reason="blocked" if old.status == BLOCKED else "declined", status_code=code)
        if old is not None and old.status == "error" and not old.steps and code == 500 and not said:
            # Some releases answer a bare 500 to the lost-definition bug; the caller may fall back to a trigger.
            raise self._error(f"{what}: the server failed with 500 and stored no pipeline", reason="server_error",
                              status_code=code)
        if said.lower().startswith("on fetching external pipeline config"):
            raise self._error(f"{what}: the server's configuration service failed, nothing was restarted"
                              f"{said_part}; retry when it answers", reason="config_service", status_code=code)
        detail = said_part if said else f" ({code}; the reason is only in the Woodpecker server log)"
        raise self._error(f"{what}: the server refused the restart and stored no pipeline{detail}",
                          reason="bad_request" if code == 400 else "server_error", status_code=code)

    def find_child(self, repo: Repo, number: int, *, above: int = 0, max_pages: int = 2) -> Pipeline | None:
        """The newest pipeline restarted from `number` (by parent, or by our restart-of variable)."""
        for candidate in self.iter_pipelines(repo, max_pages=max_pages):
            if candidate.number <= max(number, above):
                break  # newest first; children always have higher numbers
            if candidate.parent == number or candidate.variables.get(RESTART_OF_VARIABLE) == str(number):
                return candidate
        return None

    def cancel(self, repo: Repo, number: int) -> None:
        what = self.describe(repo, number)
        response = self._request("POST", f"/repos/{repo.id}/pipelines/{int(number)}/cancel", what)
        if response.status_code not in (200, 204):
            raise self._status_error(response, what, "push")

    def step_log(self, repo: Repo, number: int, step: Step) -> list[str]:
        what = f"{self.describe(repo, number)} step {step.name}"
        return decode_log(self._get_json(f"/repos/{repo.id}/logs/{int(number)}/{step.id}", what))


def _lost_cause(exc: Exception, timeout: float) -> str:
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer came within {timeout:g} s"
    return f"the connection ended before the answer ({_connection_reason(exc)})"


def _server_text(response: requests.Response) -> str:
    """The server's own words from an error answer (plain text or JSON), on one line; '' for HTML or nothing."""
    body = (response.text or "").strip()
    if not body or "<html" in body[:200].lower():
        return ""
    return " ".join(body.split())[:300]


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    for needle, reason in (("Connection refused", "connection refused"),
                           ("Name or service not known", "the host name does not resolve"),
                           ("No address associated", "the host name does not resolve"),
                           ("timed out", "connection timed out"),
                           ("RemoteDisconnected", "the server closed the connection"),
                           ("Connection reset", "the connection was reset")):
        if needle in text:
            return reason
    return type(exc).__name__


# ---- actions: what the module asks for, in one call ------------------------------------------------
@dataclasses.dataclass
class ActionRequest:
    action: str  # trigger | restart | cancel | status
    repo: str | None = None  # owner/name
    repo_id: int | None = None
    branch: str | None = None
    variables: dict[str, str] = dataclasses.field(default_factory=dict)
    pipeline: int | None = None
    fallback_to_trigger: bool = False
    wait: bool = False
    wait_timeout: float = 1800
    poll_interval: float = 10
    log_lines: int = 50
    idempotency_key: str | None = None
    force: bool = False
    history_pages: int = 2  # how far back (pages of 50) idempotency and "latest" searches look


@dataclasses.dataclass
class ActionOutcome:
    repo: Repo
    pipeline: Pipeline
    url: str
    created_new: bool = False
    reused: bool = False
    canceled: bool = False
    fallback_used: bool = False
    timed_out: bool = False
    failed_step: Step | None = None
    failed_step_log: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    replaced: int | None = None  # the pipeline a fallback trigger stands in for

    @property
    def changed(self) -> bool:
        return self.created_new or self.canceled


def run_action(client: WoodpeckerClient, request: ActionRequest, *,
               clock: t.Callable[[], float] = time.monotonic,
               sleep: t.Callable[[float], None] = time.sleep) -> ActionOutcome:
    """Resolve the repository, do the action, optionally wait, and collect the failing step's log tail."""
    repo = client.lookup_repo(request.repo) if request.repo else client.get_repo(int(request.repo_id or 0))
    branch = request.branch or repo.default_branch
    outcome: ActionOutcome
    if request.action == "trigger":
        outcome = _trigger(client, repo, branch, request)
    elif request.action == "restart":
        outcome = _restart(client, repo, branch, request)
    elif request.action == "cancel":
        outcome = _cancel(client, repo, request)
    elif request.action == "status":
        outcome = _status(client, repo, branch, request)
    else:
        raise WoodpeckerError(f"unknown action {request.action!r}", reason="bad_input")

    if request.wait:
        outcome.pipeline, outcome.timed_out = wait_for_pipeline(
            client, repo, outcome.pipeline, request.wait_timeout, request.poll_interval, clock=clock, sleep=sleep)
    if outcome.pipeline.finished and not outcome.pipeline.success:
        outcome.failed_step = outcome.pipeline.failed_step
        if outcome.failed_step is not None and request.log_lines > 0:
            try:
                lines = client.step_log(repo, outcome.pipeline.number, outcome.failed_step)
                outcome.failed_step_log = lines[-request.log_lines:]
            except WoodpeckerError as exc:
                # The verdict stands without the log; say why it is missing instead of failing the run.
                outcome.warnings.append(str(exc))
    return outcome


def _outcome(client: WoodpeckerClient, repo: Repo, pipeline: Pipeline, **flags: bool) -> ActionOutcome:
    return ActionOutcome(repo=repo, pipeline=pipeline, url=client.pipeline_url(repo, pipeline.number), **flags)


def find_by_idempotency_key(client: WoodpeckerClient, repo: Repo, branch: str, key: str,
                            max_pages: int = 2) -> Pipeline | None:
    """The newest manual pipeline on the branch carrying this key (the list answer includes variables)."""
    for candidate in client.iter_pipelines(repo, max_pages=max_pages, branch=branch, event="manual"):
        if candidate.variables.get(IDEMPOTENCY_VARIABLE) == key:
            return candidate
    return None


def _trigger(client: WoodpeckerClient, repo: Repo, branch: str, request: ActionRequest,
             extra_variables: dict[str, str] | None = None) -> ActionOutcome:
    variables = dict(extra_variables or {})
    variables.update(request.variables)
    if request.idempotency_key:
        variables[IDEMPOTENCY_VARIABLE] = request.idempotency_key
        if not request.force:
            existing = find_by_idempotency_key(client, repo, branch, request.idempotency_key, request.history_pages)
            if existing is not None:
                return _outcome(client, repo, client.get_pipeline(repo, existing.number), reused=True)
    try:
        pipeline = client.trigger(repo, branch, variables)
    except WoodpeckerError as exc:
        if exc.reason != "answer_lost":
            raise
        return _recover_lost_trigger(client, repo, branch, request, exc)
    return _outcome(client, repo, pipeline, created_new=True)


def _recover_lost_trigger(client: WoodpeckerClient, repo: Repo, branch: str, request: ActionRequest,
                          lost: WoodpeckerError) -> ActionOutcome:
    """The trigger reached the server but its answer did not come back: find the pipeline it started."""
    key = request.idempotency_key
    if key:
        outcome = _started_despite_lost_answer(
            client, repo, lost, lambda: find_by_idempotency_key(client, repo, branch, key, request.history_pages),
            f"carries idempotency key {key}")
        if outcome is not None:
            return outcome
        raise WoodpeckerError(
            f"{lost}, and no pipeline with idempotency key {key} is listed yet; run the task again with the same "
            f"idempotency_key: it picks up the pipeline if one was started and starts one only if none was",
            reason="answer_lost") from lost
    raise WoodpeckerError(
        f"{lost}; look at {client.server_url}/repos/{repo.id} before starting another, or run it again with an "
        "idempotency_key so a rerun picks up what a lost answer started instead of starting a second pipeline",
        reason="answer_lost") from lost


def _started_despite_lost_answer(client: WoodpeckerClient, repo: Repo, lost: WoodpeckerError,
                                 find: t.Callable[[], Pipeline | None], found_because: str) -> ActionOutcome | None:
    """The pipeline a request whose answer was lost started, with a warning saying how it was found; None if none
    is listed (a failed look counts as none: the caller's error then says what to do)."""
    try:
        found = find()
    except WoodpeckerError:
        found = None
    if found is None:
        return None
    outcome = _outcome(client, repo, client.get_pipeline(repo, found.number), created_new=True)
    outcome.warnings.append(f"{lost}; it did: pipeline #{found.number} {found_because}")
    return outcome


def _restart(client: WoodpeckerClient, repo: Repo, branch: str, request: ActionRequest) -> ActionOutcome:
    if request.pipeline is None:
        target = None
        history = client.iter_pipelines(repo, max_pages=request.history_pages, branch=branch)
        for index, candidate in enumerate(history):
            if index == 0 and not request.force and candidate.status not in FAILED:
                # The newest pipeline on the branch did not fail: there is nothing to rebuild.
                return _outcome(client, repo, client.get_pipeline(repo, candidate.number), reused=True)
            if candidate.status in FAILED:
                target = candidate
                break
        if target is None:
            raise WoodpeckerError(f"{client.describe(repo)}: no failed pipeline on branch {branch} among the "
                                  f"{request.history_pages * PER_PAGE_MAX} most recent", reason="not_found")
        number = target.number
    else:
        number = request.pipeline
    old = client.get_pipeline(repo, number)
    what = client.describe(repo, number)
    if old.status == BLOCKED:
        raise WoodpeckerError(f"{what} is blocked waiting for approval; a blocked pipeline cannot be restarted, "
                              "approve or decline it first", reason="blocked")
    if not request.force:
        child = _find_restart_child(client, repo, old, request.history_pages)
        if child is not None:
            return _outcome(client, repo, client.get_pipeline(repo, child.number), reused=True)
    try:
        return _outcome(client, repo, client.restart(repo, number), created_new=True)
    except WoodpeckerError as exc:
        if exc.reason == "answer_lost":
            return _recover_lost_restart(client, repo, old, exc)
        # Known server bug: a pipeline that errored before its configuration was stored cannot be
        # restarted. Released servers answer 200 with a new pipeline already in error; some answer 404
        # or a bare 500, which for a pipeline we could read and that is in error means the same thing.
        bug = exc.reason == "definition_not_found" or (
            exc.status_code in (404, 500) and exc.reason in ("not_found", "server_error")
            and old.status == "error" and not old.steps)
        if not bug:
            raise
        if not request.fallback_to_trigger:
            # A 404 is also Woodpecker's answer to a token without push permission: say both.
            also = " or the token lacks push permission" if exc.status_code == 404 else ""
            raise WoodpeckerError(
                f"{what} cannot be restarted because the server lost its definition ({DEFINITION_NOT_FOUND}, "
                f"answer {exc.status_code}{also}); set fallback_to_trigger to start a fresh manual pipeline on branch "
                f"{old.branch} instead", reason="definition_not_found", status_code=exc.status_code,
                pipeline=exc.pipeline, url=exc.url) from exc
    extra = dict(old.variables)
    extra[RESTART_OF_VARIABLE] = str(number)
    outcome = _trigger(client, repo, old.branch or branch, dataclasses.replace(request, force=True), extra)
    outcome.fallback_used = True
    outcome.replaced = number
    return outcome


def _recover_lost_restart(client: WoodpeckerClient, repo: Repo, old: Pipeline, lost: WoodpeckerError
                          ) -> ActionOutcome:
    """The restart reached the server but its answer did not come back: find the pipeline it created."""
    outcome = _started_despite_lost_answer(client, repo, lost, lambda: client.find_child(repo, old.number),
                                           f"was restarted from #{old.number}")
    if outcome is not None:
        return outcome
    raise WoodpeckerError(
        f"{lost}, and no pipeline restarted from #{old.number} is listed yet; run the same restart again: it "
        f"picks up the pipeline restarted from #{old.number} if there is one and restarts only if there is none",
        reason="answer_lost") from lost


def _find_restart_child(client: WoodpeckerClient, repo: Repo, old: Pipeline, max_pages: int) -> Pipeline | None:
    for candidate in client.iter_pipelines(repo, max_pages=max_pages, branch=old.branch):
        if candidate.number <= old.number:
            break  # list is newest first; children always have higher numbers
        is_child = candidate.parent == old.number or \
            candidate.variables.get(RESTART_OF_VARIABLE) == str(old.number)
        stillborn = any(DEFINITION_NOT_FOUND in e.lower() for e in candidate.errors)
        if is_child and not stillborn:
            return candidate
    return None


def _cancel(client: WoodpeckerClient, repo: Repo, request: ActionRequest) -> ActionOutcome:
    if request.pipeline is None:
        raise WoodpeckerError(f"{client.describe(repo)}: cancel needs a pipeline number", reason="bad_input")
    current = client.get_pipeline(repo, request.pipeline)
    if current.finished:
        return _outcome(client, repo, current)
    client.cancel(repo, request.pipeline)
    return _outcome(client, repo, client.get_pipeline(repo, request.pipeline), canceled=True)


def _status(client: WoodpeckerClient, repo: Repo, branch: str, request: ActionRequest) -> ActionOutcome:
    number = request.pipeline
    if number is None:
        latest = next(iter(client.iter_pipelines(repo, max_pages=1, branch=branch)), None)
        if latest is None:
            raise WoodpeckerError(f"{client.describe(repo)}: no pipeline on branch {branch}", reason="not_found")
        number = latest.number
    return _outcome(client, repo, client.get_pipeline(repo, number))


def wait_for_pipeline(client: WoodpeckerClient, repo: Repo, pipeline: Pipeline, timeout: float, interval: float,
                      *, clock: t.Callable[[], float] = time.monotonic,
                      sleep: t.Callable[[float], None] = time.sleep) -> tuple[Pipeline, bool]:
    """Poll until finished or blocked; answers (last state seen, whether the timeout ran out first)."""
    deadline = clock() + timeout
    current = pipeline
    while not current.finished and current.status != BLOCKED:
        remaining = deadline - clock()
        if remaining <= 0:
            return current, True
        sleep(min(interval, remaining))
        current = client.get_pipeline(repo, current.number)
    return current, False

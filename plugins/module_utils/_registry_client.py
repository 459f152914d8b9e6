# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP client for a CNCF distribution registry (v2 API).

Pure Python over the collection's own small HTTP/1.1 transport (``_http_transport``); no Ansible imports.
Every failure is a ``RegistryError`` whose message is one sentence naming the object, carrying the
HTTP status and the registry's error code.
Credentials live only in this object's private attributes: never in a message, repr or log line.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import json
import os
import re
import socket
import ssl
import threading
import time
import typing as t
from urllib.parse import quote, urlencode, urljoin, urlsplit

from ._http_transport import ConnectFailed, Origin, Response, TLSFailed, Transport, TransportError

try:
    import requests  # its CA bundle: the same trust as every requests-based tool on the host
except ImportError as exc:  # the module reports this with missing_required_lib
    requests = None  # type: ignore[assignment]
    REQUESTS_IMPORT_ERROR: t.Optional[ImportError] = exc
else:
    REQUESTS_IMPORT_ERROR = None

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_MEDIA_TYPES = frozenset((OCI_INDEX, DOCKER_MANIFEST_LIST))
IMAGE_MEDIA_TYPES = frozenset((OCI_MANIFEST, DOCKER_MANIFEST))
# An OCI manifest is answered 404 unless its exact type is in Accept, so all four always go.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

# The registry itself refuses manifests above 4 MiB; anything larger is not a manifest.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Listings are JSON arrays of names; a page this large is garbage, not a catalog.
MAX_LISTING_BYTES = 64 * 1024 * 1024
CATALOG_PAGE_SIZE = 1000  # the registry's catalog.maxentries default; larger pages answer 400
CATALOG_SCOPE = "registry:catalog:*"
RETRY_STATUSES = frozenset((408, 429, 500, 502, 503, 504))
_UNVERIFIABLE_STATUSES = frozenset((401, 403, 407, 408, 429))
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
DEFAULT_TOKEN_LIFETIME = 60  # seconds, when the token service omits expires_in
# Long enough to ride out a registry restart (compose restart, the role's GC stop and start).
DEFAULT_RETRY_WINDOW = 30.0
_MAX_BACKOFF = 5.0  # seconds between two tries, however long the window
# Bodies read with the headers (error answers, tokens, the API check) are small; more is dropped unread.
_MAX_SMALL_BODY = 1024 * 1024
# A body cut short after the headers is asked for again this many times. Not the whole window: the
# registry did answer, and a blob whose data is gone behind the blob cache is cut short every time.
_CUT_RETRIES = 2
_MAX_REDIRECTS = 5
_TOKEN_MARGIN = 5  # renew this many seconds before expiry so a token never dies in flight
_MAX_PAGES = 100000
_SUPPORTED_DIGESTS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_WELL_FORMED_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


class RegistryError(Exception):
    """One failed registry operation: a one-sentence message, the HTTP status and the error code."""

    def __init__(
        self,
        message: str,
        status: t.Optional[int] = None,
        error_code: t.Optional[str] = None,
        digest: t.Optional[str] = None,
        beyond_our_limits: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.digest = digest  # the object's digest when the answer told it (a hashed body, Docker-Content-Digest)
        # Content this client declines to walk for a limit of its own: not verified, never a verdict of damage.
        self.beyond_our_limits = beyond_our_limits

    @property
    def says_nothing_about_the_object(self) -> bool:
        """True when the failure is the registry's, the network's or the credentials', not the object's.

        No answer at all, a rejected or refused credential, throttling, a server error after retries or a
        redirect that was not followed tell nothing about whether the object is there: the object could
        not be verified, which is a different verdict from broken. A 404, a body that does not hash to its
        digest or content that is not a manifest is the object's own problem. Neither is content beyond a
        limit of this client's own (indexes nested deeper than it walks): that is not verified either.
        """
        if self.beyond_our_limits:
            return True
        status = self.status
        return status is None or status in _UNVERIFIABLE_STATUSES or status >= 500 or status in REDIRECT_STATUSES


class Manifest(t.NamedTuple):
    """A manifest as served: body bytes (hash-checked), media type and the digest of the body."""

    repository: str
    reference: str
    media_type: str
    digest: str
    body: bytes
    document: t.Dict[str, t.Any]


class BlobCheck(t.NamedTuple):
    """A blob that answered as present: its status (200, 206 or a redirect) and size if given."""

    status: int
    size: t.Optional[int]
    redirected: bool


def compute_digest(body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_SUPPORTED_DIGESTS[algorithm](body).hexdigest()}"


def named_with_digest(what: str, digest: t.Optional[str]) -> str:
    """How a message names an object asked for by tag once its digest is known: ``manifest app:v1 (sha256:..)``."""
    if not digest or digest in what:
        return what
    return f"{what} ({digest})"


# -- a deadline for the whole request ---------------------------------------------------------
# A socket timeout bounds each read, so a server that sends a byte every few seconds is never
# timed out. Each request sets a deadline for its thread; every read on a connection of this client
# waits at most until then. One request runs at a time per thread and its body is read in that thread.
_DEADLINE = threading.local()


class _DeadlineTimeout(socket.timeout):
    """The request's deadline passed while its answer was still arriving."""


class _DeadlineSocket:
    """Mixed into the class of a connected socket (plain or TLS): each read is bounded by the deadline."""

    __slots__ = ()

    def _bound_read(self) -> None:
        end = getattr(_DEADLINE, "end", None)
        if end is None:
            return
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise _DeadlineTimeout("the request's deadline passed")
        self.settimeout(min(remaining, _DEADLINE.read_timeout))  # type: ignore[attr-defined]

    def recv(self, *args: t.Any, **kwargs: t.Any) -> bytes:
        self._bound_read()
        return super().recv(*args, **kwargs)  # type: ignore[misc]

    def recv_into(self, *args: t.Any, **kwargs: t.Any) -> int:
        self._bound_read()
        return super().recv_into(*args, **kwargs)  # type: ignore[misc]


_DEADLINE_CLASSES: t.Dict[type, type] = {}


def _with_deadline(sock: t.Any) -> None:
    cls = type(sock)
    if sock is None or issubclass(cls, _DeadlineSocket):
        return
    bounded = _DEADLINE_CLASSES.get(cls)
    if bounded is None:
        # Same memory layout as cls (no new slots), so the live socket can take the class in place.
        bounded = _DEADLINE_CLASSES.setdefault(cls, type(f"Deadline{cls.__name__}", (_DeadlineSocket, cls),
                                                         {"__slots__": ()}))
    sock.__class__ = bounded


class _Answer:
    """One answer: status and headers, and the body still on its connection when streamed."""

    __slots__ = ("method", "url", "raw", "status_code", "headers", "data")

    def __init__(self, method: str, url: str, raw: Response, data: t.Optional[bytes] = None):
        self.method = method
        self.url = url
        self.raw = raw
        self.status_code: int = raw.status
        self.headers = raw.headers  # case-insensitive
        self.data = data  # the body when it was read with the headers

    def json(self) -> t.Any:
        if self.data is None:
            self.data = self.raw.read_all(_MAX_SMALL_BODY)
        return json.loads(self.data or b"")

    def close(self) -> None:
        """Hand the connection back when the body was read to its end, otherwise drop it."""
        self.raw.release()


class _CutShort(Exception):
    """A body that ended before it was complete (reset, closed early, shorter than its Content-Length)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, socket.timeout)


def _short_reason(exc: BaseException) -> str:
    """What went wrong on the connection, in a few words, without URLs or nested reprs."""
    if isinstance(exc, TransportError):
        return exc.reason
    if _is_timeout(exc):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BrokenPipeError):
        return "the server closed the connection"
    if isinstance(exc, ssl.SSLError):
        return "TLS failed in the middle of the answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _parse_challenge(header: str) -> t.Tuple[str, t.Dict[str, str]]:
    """Split ``Bearer realm="...",service="...",scope="..."`` into scheme and parameters."""
    scheme, rest = (header.strip().split(" ", 1) + [""])[:2]
    params = {key.lower(): value for key, value in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def _ascii_number(value: t.Optional[str]) -> t.Optional[int]:
    """A header's whole number, or None. ASCII digits only: str.isdigit() also takes superscripts ("²"),
    which int() then refuses with a traceback."""
    value = (value or "").strip()
    return int(value) if value and len(value) <= 19 and value.isascii() and value.isdigit() else None


def _retry_after_seconds(value: t.Optional[str]) -> t.Optional[float]:
    if not value:
        return None
    value = value.strip()
    seconds = _ascii_number(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _error_code(response: _Answer) -> t.Optional[str]:
    """The registry's first error code (``{"errors":[{"code":"MANIFEST_UNKNOWN",...}]}``), if any."""
    try:
        errors = response.json().get("errors")
        return str(errors[0]["code"]) if errors else None
    except (ValueError, AttributeError, KeyError, IndexError, TypeError, RecursionError, OSError):
        return None


def _manifest_name(repository: str, reference: str) -> str:
    return f"manifest {repository}@{reference}" if ":" in reference else f"manifest {repository}:{reference}"


class _Token(t.NamedTuple):
    value: str
    expires_at: float


class RegistryClient:
    """Talks to one registry. Thread-safe: one pooled session shared by every worker thread."""

    def __init__(
        self,
        base_url: str,
        username: t.Optional[str] = None,
        password: t.Optional[str] = None,
        verify: t.Union[bool, str] = True,
        timeout: float = 30.0,
        pool_size: int = 8,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        retries: t.Optional[int] = None,
        backoff: float = 0.25,
        max_retry_after: float = 10.0,
        user_agent: str = "selfhosted.registry",
        clock: t.Callable[[], float] = time.monotonic,
    ):
        if requests is None:
            raise RegistryError("The Python library requests is required to talk to a registry.")
        parts = urlsplit(base_url.strip())
        if parts.username or parts.password:
            # Checked first, and the URL is never echoed: it holds a secret.
            raise RegistryError("The registry URL must not contain credentials; use username and password.")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"Registry URL {base_url!r} is not an http:// or https:// URL with a host.")
        try:
            port = parts.port
        except ValueError:
            raise RegistryError(f"Registry URL {base_url!r} has a port that is not a number.") from None
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        self.timeout = timeout
        # 408, 429, 5xx and connection errors are retried until retry_window seconds after the first
        # failure; retries (None: no limit) caps the number of tries as well.
        self.retry_window = max(0.0, float(retry_window))
        self.retries = None if retries is None else max(0, retries)
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self._username = username or None
        self._password = password or None
        self._verify = verify
        # Nothing is read from the environment (no netrc credentials, no proxies behind the user's back).
        self._origin: Origin = (parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))
        # Connections to the registry are kept; so are those to two other hosts at most (the token
        # service, object storage a blob redirects to), which never push the registry's out.
        self._transport = Transport(self._origin, timeout, self._tls_context, pool_size=pool_size, max_origins=3,
                                    on_connect=_with_deadline)
        # Bodies are hashed as sent: a compressed manifest would not hash to its digest.
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity", "Accept": "*/*"}
        self._lock = threading.Lock()
        self._scheme: t.Optional[str] = None  # "basic" or "bearer" once the registry has asked
        self._challenge: t.Dict[str, str] = {}
        self._tokens: t.Dict[str, _Token] = {}
        self._token_locks: t.Dict[str, threading.Lock] = {}
        self._request_count = 0
        self._failing_since: t.Optional[float] = None  # when the registry last began to fail, None when it answers
        self._clock = clock  # token expiry only; tests pass their own

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far, retries and token requests included."""
        return self._request_count

    def close(self) -> None:
        self._transport.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._verify is False:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        # The same trust as requests: its CA bundle by default, or the file or directory given.
        ca = requests.utils.DEFAULT_CA_BUNDLE_PATH if self._verify is True else str(self._verify)
        return ssl.create_default_context(**{"capath" if os.path.isdir(ca) else "cafile": ca})

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()

    # -- authentication -------------------------------------------------------------------------

    def _basic_auth(self) -> t.Optional[str]:
        """The Basic Authorization header value, or None without a username."""
        if self._username is None:
            return None
        pair = f"{self._username}:{self._password or ''}".encode("utf-8")
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _token_for(self, scope: str) -> str:
        with self._lock:
            token = self._tokens.get(scope)
            if token and token.expires_at > self._clock():
                return token.value
            scope_lock = self._token_locks.setdefault(scope, threading.Lock())
        # One token request per scope even when many workers need it at the same moment.
        with scope_lock:
            with self._lock:
                token = self._tokens.get(scope)
                if token and token.expires_at > self._clock():
                    return token.value
            token = self._fetch_token(scope)
            with self._lock:
                self._tokens[scope] = token
            return token.value

    def _fetch_token(self, scope: str) -> _Token:
        realm = self._challenge.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"Registry {self.host} asked for a bearer token without a usable realm.")
        query = {}
        if self._challenge.get("service"):
            query["service"] = self._challenge["service"]
        if scope:
            query["scope"] = scope
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        what = f"the token service {urlsplit(realm).netloc}"
        basic = self._basic_auth()
        if basic and self._origin[0] == "https" and urlsplit(realm).scheme != "https":
            # The registry is reached over TLS; its credentials must not then cross the network in clear.
            raise RegistryError(
                f"Registry {self.host} asks for tokens from {urlsplit(realm).netloc} over plain http://,"
                " where the credentials would travel unencrypted; they were not sent."
            )
        response = self._send("GET", url, what, headers={"Authorization": basic} if basic else None)
        try:
            if response.status_code in (401, 403):
                raise RegistryError(
                    f"The token service {urlsplit(realm).netloc} rejected the credentials"
                    f" (HTTP {response.status_code}).",
                    status=response.status_code,
                    error_code=_error_code(response),
                )
            if response.status_code != 200:
                raise RegistryError(
                    f"The token service {urlsplit(realm).netloc} answered HTTP {response.status_code}.",
                    status=response.status_code,
                    error_code=_error_code(response),
                )
            try:
                payload = response.json()
                value = payload.get("token") or payload.get("access_token")
                lifetime = float(payload.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
            except (ValueError, AttributeError, TypeError, OverflowError):
                value = None
                lifetime = 0.0
            if not isinstance(value, str) or not value:
                raise RegistryError(f"The token service {urlsplit(realm).netloc} answered without a token.")
        finally:
            response.close()
        lifetime = max(lifetime, 1.0)
        return _Token(value, self._clock() + max(lifetime - _TOKEN_MARGIN, lifetime / 2))

    def _authorization(self, scope: t.Optional[str]) -> t.Optional[str]:
        if self._scheme == "basic":
            return self._basic_auth()
        if self._scheme == "bearer":
            return f"Bearer {self._token_for(scope or '')}"
        return None

    def _learn_challenge(self, response: _Answer, what: str) -> bool:
        """Remember how the registry wants to be authenticated; False when nothing new was learned."""
        scheme, params = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        with self._lock:
            if scheme == "basic":
                if self._scheme == "basic" or self._username is None:
                    return False
                self._scheme = "basic"
                return True
            if scheme == "bearer":
                if self._scheme == "bearer" and params.get("realm") == self._challenge.get("realm"):
                    return False
                self._scheme = "bearer"
                self._challenge = params
                self._tokens.clear()
                return True
        return False

    # -- transport ------------------------------------------------------------------------------

    def _origin_for(self, url: str, what: str) -> t.Tuple[Origin, str]:
        """The origin (scheme, host, port) of a URL and the target to ask it for; the registry's at hand."""
        base = self.base_url
        if url.startswith(base) and url[len(base):len(base) + 1] in ("/", "?"):
            return self._origin, url[len(base):]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(
                f"{what} points to an {parts.scheme} URL, which cannot be followed (only http and https can)."
            )
        try:
            port = parts.port
        except ValueError:
            raise RegistryError(f"{what} points to {parts.netloc}, whose port is not a number.") from None
        origin = (parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))
        return origin, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def _send(
        self, method: str, url: str, what: str, headers: t.Optional[t.Dict[str, str]] = None, stream: bool = False
    ) -> _Answer:
        """One request with retries for 408/429/5xx and connection errors; never follows redirects.

        Each try must be complete (headers, and the body when the caller reads it at once) within
        ``timeout`` seconds. A try that runs out of time is not repeated: a registry too slow to answer
        would be as slow again, and the wait would multiply. ``stream`` leaves the body on the
        connection for the caller to read (or not); otherwise it is read with the headers.
        """
        origin, target = self._origin_for(url, what)
        merged = dict(self._headers)
        if headers:
            merged.update(headers)
        attempt = 0
        first_failure: t.Optional[float] = None
        while True:
            with self._lock:
                self._request_count += 1
            _DEADLINE.end = time.monotonic() + self.timeout
            _DEADLINE.read_timeout = self.timeout
            try:
                raw = self._transport.request(origin, method, target, merged)
                data = None if stream else raw.read_all(_MAX_SMALL_BODY)
            except TLSFailed as exc:
                reason = exc.reason
                if isinstance(self._verify, str) and not os.path.exists(self._verify):
                    reason = f"the CA file {self._verify} does not exist"
                raise RegistryError(f"Could not reach {what} at {urlsplit(url).netloc}: {reason}.") from None
            except ValueError as exc:
                raise RegistryError(f"Request for {what} was not sent: {exc}.") from None
            except OSError as exc:
                # Connection refused, reset or closed, a connect timeout: the registry may be restarting.
                # A read that timed out is not repeated (see above).
                if _is_timeout(exc) and not isinstance(exc, ConnectFailed):
                    raise self.timeout_error(what, url) from None
                first_failure = first_failure or time.monotonic()
                delay = self._retry_delay(attempt, None, first_failure)
                if delay is None:
                    raise RegistryError(
                        f"Could not reach {what} at {urlsplit(url).netloc}: {_short_reason(exc)}."
                    ) from None
                time.sleep(delay)
                attempt += 1
                continue
            response = _Answer(method, url, raw, data)
            if response.status_code in RETRY_STATUSES:
                first_failure = first_failure or time.monotonic()
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                delay = self._retry_delay(attempt, retry_after, first_failure)
                if delay is not None:
                    response.close()
                    time.sleep(delay)
                    attempt += 1
                    continue
            elif self._failing_since is not None:
                with self._lock:
                    self._failing_since = None  # it answers: the next failure starts a new window
            return response

    def timeout_error(self, what: str, url: str) -> RegistryError:
        return RegistryError(
            f"{what} at {urlsplit(url).netloc} did not answer completely within the {self.timeout:g}-second timeout."
        )

    def _retry_delay(self, attempt: int, retry_after: t.Optional[float], first_failure: float) -> t.Optional[float]:
        """Seconds to wait before the next try, or None when the retries are over.

        The window starts at this request's first failure, or earlier when the registry was already
        failing for other requests: once it has failed for the whole window, each object gets one try,
        so a registry that stays down ends a catalog walk in about one window, not one per object.
        """
        now = time.monotonic()
        with self._lock:
            if self._failing_since is None:
                self._failing_since = first_failure
            end = min(first_failure, self._failing_since) + self.retry_window
        if self.retries is not None and attempt >= self.retries:
            return None
        delay = min(self.backoff * (2 ** attempt), _MAX_BACKOFF)
        if retry_after is not None:
            # The server knows best, within reason: a huge Retry-After must not stall the run.
            delay = min(max(retry_after, 0.0), self.max_retry_after)
        if now + delay > end:
            return None
        return delay

    def request(
        self,
        method: str,
        path: str,
        what: str,
        scope: t.Optional[str],
        headers: t.Optional[t.Dict[str, str]] = None,
        stream: bool = False,
        url: t.Optional[str] = None,
    ) -> _Answer:
        """An authenticated request: answers a 401 challenge once, then returns whatever came back."""
        target = url or self.base_url + path
        refreshed = False
        # At most: one anonymous try that learns the challenge, one with credentials, one with a fresh token.
        for unused_attempt in range(3):
            authorization = self._authorization(scope)
            merged = dict(headers) if headers else {}
            if authorization:
                merged["Authorization"] = authorization
            response = self._send(method, target, what, headers=merged, stream=stream)
            if response.status_code != 401:
                return response
            learned = self._learn_challenge(response, what)
            if not learned and self._scheme == "bearer" and not refreshed:
                # Same realm, token refused: it may have expired early on the server's clock. Once more, fresh.
                with self._lock:
                    self._tokens.pop(scope or "", None)
                learned = refreshed = True
            if not learned:
                break
            response.close()
        if self._scheme is None or (self._scheme == "basic" and self._username is None):
            message = f"Registry {self.host} requires credentials for {what}."
        elif self._username is None:
            message = f"Registry {self.host} refused anonymous access to {what}."
        elif _parse_challenge(response.headers.get("WWW-Authenticate", ""))[1].get("error") == "insufficient_scope":
            message = f"Registry {self.host} does not grant these credentials access to {what} (insufficient scope)."
        else:
            message = f"Registry {self.host} rejected the credentials for {what}."
        code = _error_code(response)
        response.close()
        raise RegistryError(message, status=401, error_code=code)

    def _fail(self, response: _Answer, what: str) -> RegistryError:
        if response.status_code in REDIRECT_STATUSES:
            response.close()
            target = urlsplit(urljoin(response.url, response.headers.get("Location") or "")).netloc or "nowhere"
            return RegistryError(
                f"{what} answered a redirect (HTTP {response.status_code} to {target}), which is not followed.",
                status=response.status_code,
            )
        code = _error_code(response) if response.method != "HEAD" else None
        response.close()
        detail = f"{response.status_code} {code}" if code else f"HTTP {response.status_code}"
        return RegistryError(f"{what} answered {detail}.", status=response.status_code, error_code=code)

    def _pause_after_cut(self, attempt: int) -> bool:
        """Wait before asking again for a body cut short; False when the tries are over."""
        if attempt >= _CUT_RETRIES or (self.retries is not None and attempt >= self.retries):
            return False
        time.sleep(min(self.backoff * (2 ** attempt), _MAX_BACKOFF))
        return True

    # -- API --------------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry speaks the v2 API and accepts our credentials."""
        what = f"the v2 API of {self.host}"
        response = self.request("GET", "/v2/", what, scope=None)
        try:
            if response.status_code != 200:
                raise self._fail(response, f"Registry {self.host}")
            version = response.headers.get("Docker-Distribution-API-Version", "")
            if version and not version.startswith("registry/2"):
                raise RegistryError(f"Registry {self.host} does not speak the v2 API ({version}).")
        finally:
            response.close()

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # a walk asks for every object of a repository by this path
    def _repo_path(repository: str) -> str:
        return "/v2/" + "/".join(quote(part, safe="") for part in repository.split("/"))

    def _object_request(self, method: str, repository: str, kind: str, reference: str, what: str,
                        stream: bool = False) -> _Answer:
        """A request for one manifest or blob (``kind``) of a repository, with the pull scope it needs.

        Manifests are asked for with every media type the walk reads; a blob GET asks for its first byte.
        """
        if kind == "manifests":
            headers = {"Accept": MANIFEST_ACCEPT}
        else:
            headers = {"Range": "bytes=0-0"} if method == "GET" else {}
        return self.request(method, f"{self._repo_path(repository)}/{kind}/{quote(reference, safe=':')}", what,
                            scope=f"repository:{repository}:pull", headers=headers, stream=stream)

    def get_manifest(self, repository: str, reference: str, what: str = "") -> Manifest:
        """GET a manifest by tag or digest; the body is hash-checked against what was asked for.

        An error names the object asked for: its digest is the one asked for, or for a tag what the body
        hashes to. The registry's Docker-Content-Digest only names a tag's object when nothing contradicts it
        (a body too large to hash or cut short); a claim the body disproves, or that is not a digest, never.
        """
        what = what or _manifest_name(repository, reference)
        asked = reference if _WELL_FORMED_DIGEST.fullmatch(reference) else None
        attempt = 0
        claimed: t.Optional[str] = None
        while True:
            response = self._object_request("GET", repository, "manifests", reference, what, stream=True)
            try:
                if response.status_code != 200:
                    raise self._fail(response, what)
                header_digest = (response.headers.get("Docker-Content-Digest") or "").strip()
                claimed = header_digest if _WELL_FORMED_DIGEST.fullmatch(header_digest) else None
                content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
                declared = _ascii_number(response.headers.get("Content-Length"))
                if declared is not None and declared > MAX_MANIFEST_BYTES:
                    raise RegistryError(
                        f"{named_with_digest(what, asked or claimed)} is {declared} bytes, larger than the"
                        f" {MAX_MANIFEST_BYTES // 1048576} MiB a registry accepts for a manifest.",
                        status=200,
                        digest=asked or claimed,
                    )
                try:
                    body = self._read_capped(response, MAX_MANIFEST_BYTES, what, "a registry accepts for a manifest")
                except RegistryError as exc:
                    exc.digest = exc.digest or asked or claimed
                    raise
                break
            except _CutShort as cut:
                if not self._pause_after_cut(attempt):
                    # No status: a body cut short says nothing about the object, only about the connection.
                    raise RegistryError(f"{what} could not be read completely ({cut.reason}).",
                                        digest=asked or claimed) from None
                attempt += 1
            finally:
                response.close()

        algorithm = reference.split(":", 1)[0] if ":" in reference else "sha256"
        if algorithm not in _SUPPORTED_DIGESTS:
            raise RegistryError(f"{what} uses the unsupported digest algorithm {algorithm!r}.", status=200)
        digest = compute_digest(body, algorithm)
        if ":" in reference and digest != reference:
            raise RegistryError(f"{what} has content whose digest is {digest}, not the one asked for.", 200,
                                digest=reference)
        if header_digest and header_digest.split(":", 1)[0] in _SUPPORTED_DIGESTS:
            if claimed is None:
                raise RegistryError(f"{named_with_digest(what, digest)} came with a Docker-Content-Digest header"
                                    " that is not a digest.", 200, digest=digest)
            if compute_digest(body, claimed.split(":", 1)[0]) != claimed:
                # The claim is the registry's; the content is what the object asked for really is.
                raise RegistryError(
                    f"{what} has content whose digest is {digest}, but the registry claims {claimed}.", 200,
                    digest=digest,
                )
        named = named_with_digest(what, digest)
        try:
            document = json.loads(body)
        except ValueError:
            kind = content_type or "no content type"
            raise RegistryError(f"{named} is not JSON ({kind}).", status=200, digest=digest) from None
        except RecursionError:
            # The registry stores any JSON it is given; nesting this deep is hostile, never a manifest.
            raise RegistryError(f"{named} is JSON nested too deeply to be a manifest.", status=200,
                                digest=digest) from None
        if not isinstance(document, dict):
            raise RegistryError(f"{named} is JSON but not a manifest object.", status=200, digest=digest)
        media_type = document.get("mediaType") or content_type
        if not isinstance(media_type, str):
            media_type = content_type
        return Manifest(repository, reference, media_type, digest, body, document)

    def head_manifest(self, repository: str, reference: str, what: str = "") -> t.Tuple[int, t.Optional[str]]:
        """HEAD a manifest (content is read by the registry, so this is reliable); returns status and digest."""
        what = what or _manifest_name(repository, reference)
        response = self._object_request("HEAD", repository, "manifests", reference, what)
        response.close()
        if response.status_code != 200:
            raise self._error_with_body(repository, "manifests", reference, response, what)
        return response.status_code, response.headers.get("Docker-Content-Digest")

    def _error_with_body(
        self, repository: str, kind: str, reference: str, head: _Answer, what: str
    ) -> RegistryError:
        """A HEAD failure has no body; ask once more with GET so the error code can be reported."""
        if head.status_code not in (404, 400, 403, 500):
            return self._fail(head, what)
        response = self._object_request("GET", repository, kind, reference, what, stream=True)
        if response.status_code in (200, 206):
            response.close()
            return RegistryError(f"{what} answered HTTP {head.status_code} to HEAD.", status=head.status_code)
        return self._fail(response, what)

    def check_blob(self, repository: str, digest: str, mode: str = "head", what: str = "") -> BlobCheck:
        """Prove a blob is present: ``head`` asks for its headers, ``read`` fetches its first byte.

        A redirect (object storage) proves presence in ``head`` mode and is not followed. In ``read``
        mode it is followed without our Authorization header when it points to another origin.
        """
        what = what or f"blob {repository}@{digest}"
        if mode == "head":
            response = self._object_request("HEAD", repository, "blobs", digest, what)
            response.close()
            if response.status_code in REDIRECT_STATUSES:
                return BlobCheck(response.status_code, None, True)
            if response.status_code == 200:
                return BlobCheck(200, _ascii_number(response.headers.get("Content-Length")), False)
            raise self._error_with_body(repository, "blobs", digest, response, what)
        if mode != "read":
            raise RegistryError(f"Unknown blob check mode {mode!r}.")

        attempt = 0
        while True:
            response, redirected = self._open_first_byte(repository, digest, what)
            try:
                if response.status_code not in (200, 206):
                    raise self._fail(response, what)
                try:
                    first = response.raw.read(1)
                except OSError as exc:  # cut short, reset, closed
                    if _is_timeout(exc):
                        raise self.timeout_error(what, response.url) from None
                    first = b""
                if first:
                    length = None
                    content_range = response.headers.get("Content-Range", "")
                    if "/" in content_range:
                        length = _ascii_number(content_range.rsplit("/", 1)[1])
                    elif response.status_code == 200:
                        length = _ascii_number(response.headers.get("Content-Length"))
                    return BlobCheck(response.status_code, length, redirected)
                status = response.status_code
            finally:
                response.close()
            # Cut short: once may be the network; every time is what 2.8 does after GC on a running registry.
            if not self._pause_after_cut(attempt):
                raise RegistryError(
                    f"{what} answered {status} but sent no content"
                    " (its data is gone while the registry's blob cache still lists it).",
                    status=status,
                )
            attempt += 1

    def _open_first_byte(self, repository: str, digest: str, what: str, whole: bool = False) -> t.Tuple[_Answer, bool]:
        """GET the first byte of a blob (all of it when ``whole``), following redirects (object storage);
        returns the answer and whether it was redirected."""
        range_header = {} if whole else {"Range": "bytes=0-0"}
        if whole:
            response = self.request("GET", f"{self._repo_path(repository)}/blobs/{quote(digest, safe=':')}", what,
                                    scope=f"repository:{repository}:pull", stream=True)
        else:
            response = self._object_request("GET", repository, "blobs", digest, what, stream=True)
        scope = f"repository:{repository}:pull"
        redirected = False
        hops = 0
        while response.status_code in REDIRECT_STATUSES:
            status = response.status_code
            location = response.headers.get("Location")
            response.close()
            if not location:
                raise RegistryError(f"{what} answered a redirect (HTTP {status}) without a location.", status)
            if hops >= _MAX_REDIRECTS:
                raise RegistryError(f"{what} kept redirecting (more than {_MAX_REDIRECTS} redirects).", status)
            target = urljoin(response.url, location)
            scheme = urlsplit(target).scheme
            if scheme not in ("http", "https"):
                raise RegistryError(
                    f"{what} redirects to an {scheme or 'unnamed'} URL, which cannot be followed"
                    " (only http and https can).",
                    status,
                )
            if scheme == "http" and urlsplit(response.url).scheme == "https":
                raise RegistryError(
                    f"{what} redirects from https:// to plain http:// ({urlsplit(target).netloc}),"
                    " which is not followed.",
                    status,
                )
            redirected = True
            hops += 1
            same_origin = urlsplit(target)[:2] == urlsplit(self.base_url)[:2]
            if same_origin:
                response = self.request("GET", "", what, scope=scope, headers=dict(range_header),
                                        stream=True, url=target)
            else:
                # Another host (object storage): it gets a signed URL, never our credentials.
                response = self._send("GET", target, what, headers=dict(range_header), stream=True)
        return response, redirected

    def stream_blob(self, repository: str, digest: str, sink: t.Callable[[bytes], None], what: str = "") -> int:
        """GET a whole blob and hand its body to ``sink`` chunk by chunk; returns the bytes sent.

        The caller hashes what it receives: a body cut short or altered is its to refuse. A redirect is
        followed as in ``check_blob`` (read mode), never with our credentials to another origin.
        """
        what = what or f"blob {repository}@{digest}"
        response, _redirected = self._open_first_byte(repository, digest, what, whole=True)
        try:
            if response.status_code != 200:
                raise self._fail(response, what)
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise RegistryError(f"{what} came in the {encoding} content encoding, which was not asked for.")
            size = 0
            while True:
                try:
                    chunk = response.raw.read(1048576)
                except OSError as exc:
                    if _is_timeout(exc):
                        raise self.timeout_error(what, response.url) from None
                    raise RegistryError(f"{what} could not be read completely ({_short_reason(exc)}).") from None
                if not chunk:
                    return size
                size += len(chunk)
                sink(chunk)
        finally:
            response.close()

    def _read_capped(self, response: _Answer, limit: int, what: str, limit_text: str) -> bytes:
        """The whole body; raises _CutShort when it ends early, RegistryError when too large or too slow."""
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Not the object's fault (no status): something between here and the registry compressed it.
            raise RegistryError(f"{what} came in the {encoding} content encoding, which was not asked for.")
        chunks = []
        size = 0
        try:
            while True:
                chunk = response.raw.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise RegistryError(
                        f"{what} is larger than the {limit // 1048576} MiB {limit_text}.",
                        status=response.status_code,
                    )
                chunks.append(chunk)
        except OSError as exc:
            if _is_timeout(exc):
                raise self.timeout_error(what, response.url) from None
            raise _CutShort(_short_reason(exc)) from None
        return b"".join(chunks)

    def _paginate(self, first_path: str, key: str, what: str, scope: str) -> t.List[str]:
        """Follow relative ``Link: <...>; rel="next"`` headers; stop on a loop or a foreign host."""
        names: t.List[str] = []
        url: t.Optional[str] = self.base_url + first_path
        seen: t.Set[str] = set()
        while url:
            if url in seen or len(seen) >= _MAX_PAGES:
                raise RegistryError(f"The {what} pagination of {self.host} loops back to a page already read.")
            seen.add(url)
            body, link = self._read_page(url, what, scope)
            try:
                document = json.loads(body)
                page = document.get(key) if isinstance(document, dict) else None
                if page is None and not (isinstance(document, dict) and key in document):
                    raise ValueError
            except (ValueError, RecursionError):
                raise RegistryError(
                    f"The {what} of {self.host} answered something that is not a JSON {key} list.", 200
                ) from None
            if page is None:
                page = []  # 2.8.x answers "tags": null for a repository whose tags are all gone
            if not isinstance(page, list) or not all(isinstance(name, str) for name in page):
                raise RegistryError(f"The {what} of {self.host} lists {key} that are not names.", 200)
            names.extend(page)
            url = self._next_link(link, url, what)
        return names

    def _read_page(self, url: str, what: str, scope: str) -> t.Tuple[bytes, str]:
        """One listing page and its Link header; a page cut short is asked for again."""
        attempt = 0
        while True:
            response = self.request("GET", "", f"the {what}", scope=scope, url=url, stream=True,
                                    headers={"Accept": "application/json"})
            try:
                if response.status_code != 200:
                    raise self._fail(response, f"The {what} of {self.host}")
                body = self._read_capped(response, MAX_LISTING_BYTES, f"The {what} of {self.host}",
                                         "allowed for a listing")
                return body, response.headers.get("Link", "")
            except _CutShort as cut:
                if not self._pause_after_cut(attempt):
                    raise RegistryError(f"The {what} of {self.host} could not be read completely ({cut.reason}).") from None
                attempt += 1
            finally:
                response.close()

    def _next_link(self, header: str, current: str, what: str) -> t.Optional[str]:
        match = re.search(r'<([^>]*)>\s*;[^,]*rel="?next"?', header)
        if not match:
            return None
        target = urljoin(current, match.group(1))
        if urlsplit(target)[:2] != urlsplit(self.base_url)[:2]:
            raise RegistryError(f"The {what} of {self.host} points its next page to another host.")
        return target

    def list_repositories(self) -> t.List[str]:
        return self._paginate(f"/v2/_catalog?n={CATALOG_PAGE_SIZE}", "repositories", "catalog", CATALOG_SCOPE)

    def list_tags(self, repository: str) -> t.List[str]:
        return self._paginate(
            f"{self._repo_path(repository)}/tags/list",
            "tags",
            f"tag list of {repository}",
            f"repository:{repository}:pull",
        )

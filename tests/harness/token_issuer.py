# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small token server for the registry's `auth.token` mode, so tests run a real Bearer flow.

It speaks the registry token protocol (GET realm?service=..&scope=.. with Basic credentials), grants
only what each user may, signs RS256 JWTs whose `x5c` header carries the signing certificate, and
records every request so tests can count how often a client asked for a token.

The registry (distribution 2.8, registry/auth/token) trusts a JWT when its `x5c` chain verifies against
`rootcertbundle`; the signing certificate is self-signed and is the bundle itself.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.server
import json
import pathlib
import secrets
import threading
import time
import typing as t
import urllib.parse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from .tls import make_self_signed

FULL_ACCESS: dict[str, tuple[str, ...]] = {"repository": ("pull", "push", "delete", "*"), "registry": ("*",)}
PULL_ONLY: dict[str, tuple[str, ...]] = {"repository": ("pull",)}


@dataclasses.dataclass(frozen=True)
class TokenUser:
    """A user of the token server and the actions it may be granted per resource type."""

    password: str
    allowed: dict[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered, as a test sees it (never the password)."""

    method: str
    path: str
    username: str | None
    service: str | None
    requested_scopes: tuple[str, ...]
    granted_scopes: tuple[str, ...]
    status: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """Split `type:name:actions`; the name may itself hold a colon (a host with a port)."""
    resource_type, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not resource_type or not name:
        return None
    return resource_type, name, tuple(a for a in actions.split(",") if a)


class TokenIssuer:
    """Threaded token server on 127.0.0.1; start() binds a free port, stop() shuts it down."""

    def __init__(
        self,
        workdir: pathlib.Path,
        users: dict[str, TokenUser],
        *,
        service: str = "selfhosted-registry-test",
        issuer: str = "selfhosted-registry-test-issuer",
        expires_in: int = 300,
    ) -> None:
        self.workdir = workdir
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        signer = make_self_signed(workdir, "selfhosted.registry test token signer", "token-signer", is_ca=False)
        self.rootcertbundle: pathlib.Path = signer.cert_path
        self._private_key = signer.private_key
        self._x5c = base64.b64encode(signer.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token issuer is not running")
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        if self._server is not None:
            return
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                issuer._handle(self)

            def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002
                return  # quiet: the recorded requests are the log

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-issuer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    # -- what tests inspect ----------------------------------------------------------------
    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def token_request_count(self, username: str | None = None, *, granted_only: bool = False) -> int:
        """How many token requests arrived (for one user, or all); rejected ones count unless granted_only."""
        return sum(
            1
            for r in self.requests
            if (username is None or r.username == username) and (not granted_only or r.status == 200)
        )

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- token logic -----------------------------------------------------------------------
    def grant(self, username: str, scopes: t.Iterable[str]) -> list[dict[str, t.Any]]:
        """The access entries a user gets: the intersection of what was asked and what is allowed."""
        allowed = self.users[username].allowed
        access: list[dict[str, t.Any]] = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            resource_type, name, actions = parsed
            permitted = allowed.get(resource_type, ())
            granted = [a for a in actions if a in permitted]
            if granted:
                access.append({"type": resource_type, "name": name, "actions": granted})
        return access

    def issue(self, username: str, access: list[dict[str, t.Any]], *, expires_in: int | None = None) -> str:
        """A signed JWT the registry accepts for ``access``."""
        now = int(time.time())
        lifetime = self.expires_in if expires_in is None else expires_in
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": username,
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 10,  # tolerate a registry clock slightly ahead
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def _authenticate(self, header: str | None) -> tuple[str | None, bool]:
        """(username, ok). No header is anonymous; a bad or unknown credential is refused."""
        if not header:
            return None, False
        kind, _sep, value = header.partition(" ")
        if kind.lower() != "basic":
            return None, False
        try:
            username, _sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, False
        user = self.users.get(username)
        if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
            return username or None, False
        return username, True

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(parsed.query)
        scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
        service = query.get("service", [None])[0]
        username, ok = self._authenticate(request.headers.get("Authorization"))

        if parsed.path != "/token":
            status, body, granted = 404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]}, ()
        elif not ok:
            status, body, granted = 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}, ()
        elif service != self.service:
            status, body, granted = 400, {"errors": [{"code": "INVALID_SERVICE", "message": "unknown service"}]}, ()
        else:
            assert username is not None
            access = self.grant(username, scopes)
            token = self.issue(username, access)
            issued_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            status = 200
            body = {"token": token, "access_token": token, "expires_in": self.expires_in, "issued_at": issued_at}
            granted = tuple(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access)

        with self._lock:
            self._requests.append(
                TokenRequest(request.command, parsed.path, username, service, scopes, granted, status)
            )
        payload = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        if status == 401:
            request.send_header("WWW-Authenticate", 'Basic realm="selfhosted-registry-test-tokens"')
        request.end_headers()
        request.wfile.write(payload)

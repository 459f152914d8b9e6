# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real `docker-registry serve` process on a free 127.0.0.1 port with a temporary storage root.

Four auth modes: anonymous, basic (bcrypt htpasswd made by the `htpasswd` binary), token (the
registry's `auth.token` with tests/harness/token_issuer.py as realm) and tls (anonymous over HTTPS with a
CA made by tests/harness/tls.py). The process is started and stopped by PID; if it cannot start, the
error carries the tail of its log so the failing test says why.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import time
import typing as t

import requests
import yaml

from .tls import make_server_tls
from .token_issuer import FULL_ACCESS, PULL_ONLY, TokenIssuer, TokenUser

REGISTRY_BINARY = os.environ.get("SELFHOSTED_REGISTRY_BINARY", "/usr/bin/docker-registry")
HTPASSWD_BINARY = os.environ.get("SELFHOSTED_HTPASSWD_BINARY", "/usr/bin/htpasswd")
AUTH_MODES = ("anonymous", "basic", "token", "tls")
# Not in AUTH_MODES (which the any_registry fixture runs every test under): htpasswd auth over HTTPS,
# the way clients meet a production registry.
BASIC_TLS = "basic-tls"

# Generous bounds for a process that starts in well under a second: they only stop a hung test.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
GC_TIMEOUT = 900.0


# Every process this module started and has not stopped yet: a last-resort stop at interpreter exit,
# so an interrupted run leaves no registry behind. Normal teardown stops each one by PID first.
_LIVE_PROCESSES: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _stop_leftovers() -> None:
    for pid, process in list(_LIVE_PROCESSES.items()):
        if process.poll() is None:
            os.kill(pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
        _LIVE_PROCESSES.pop(pid, None)


class RegistryStartError(RuntimeError):
    """The registry process could not be started or did not answer /v2/."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: dict[str, t.Any], overrides: dict[str, t.Any]) -> dict[str, t.Any]:
    """Merge ``overrides`` into a copy of ``base``; a None value removes the key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclasses.dataclass(eq=False)
class RegistryServer:
    """One registry process and everything a test needs to reach it."""

    workdir: pathlib.Path
    auth: str
    port: int
    storage_root: pathlib.Path
    config_path: pathlib.Path
    log_path: pathlib.Path
    config: dict[str, t.Any]
    username: str | None = None
    password: str | None = None
    readonly_username: str | None = None
    readonly_password: str | None = None
    ca_path: pathlib.Path | None = None
    token_issuer: TokenIssuer | None = None
    process: subprocess.Popen[bytes] | None = None
    # Bumped by every garbage collection and restart: clients that remember blobs must forget them.
    generation: int = 0

    # -- addresses ---------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.auth in ("tls", BASIC_TLS) else "http"

    @property
    def basic_auth(self) -> bool:
        """htpasswd users: ``username``/``password`` and ``readonly_*``."""
        return self.auth in ("basic", BASIC_TLS)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def tree(self) -> pathlib.Path:
        """The storage tree the registry writes: blobs/ and repositories/ live here."""
        return self.storage_root / "docker" / "registry" / "v2"

    def repository_path(self, repository: str) -> pathlib.Path:
        return self.tree / "repositories" / repository

    def blob_data_path(self, digest: str) -> pathlib.Path:
        algorithm, _sep, hex_digest = digest.partition(":")
        return self.tree / "blobs" / algorithm / hex_digest[:2] / hex_digest / "data"

    def revision_link_path(self, repository: str, digest: str) -> pathlib.Path:
        algorithm, _sep, hex_digest = digest.partition(":")
        return self.repository_path(repository) / "_manifests" / "revisions" / algorithm / hex_digest / "link"

    def layer_link_path(self, repository: str, digest: str) -> pathlib.Path:
        algorithm, _sep, hex_digest = digest.partition(":")
        return self.repository_path(repository) / "_layers" / algorithm / hex_digest / "link"

    def tag_path(self, repository: str, tag: str) -> pathlib.Path:
        """The tag's directory; ``current/link`` inside it holds what the tag resolves to."""
        return self.repository_path(repository) / "_manifests" / "tags" / tag

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def verify(self) -> str | bool:
        """What to pass as requests' ``verify``: the test CA for tls, default trust otherwise."""
        return str(self.ca_path) if self.ca_path is not None else True

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- config ------------------------------------------------------------------------------
    def write_config(self) -> None:
        self.config.setdefault("http", {})["addr"] = self.host
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")

    def update_config(self, overrides: dict[str, t.Any], *, restart: bool = True) -> None:
        """Merge ``overrides`` into the config file; restart a running registry so it takes effect."""
        self.config = deep_merge(self.config, overrides)
        self.write_config()
        if restart and self.is_running:
            self.restart()

    def set_readonly(self, enabled: bool) -> None:
        """storage.maintenance.readonly.enabled, then restart (or just rewrite if stopped)."""
        self.update_config({"storage": {"maintenance": {"readonly": {"enabled": bool(enabled)}}}})

    # -- process -----------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Start the process and wait until /v2/ answers (any HTTP status: auth modes answer 401)."""
        if self.is_running:
            return
        self.write_config()
        with self.log_path.open("ab") as log:
            log.write(f"--- harness: starting registry on {self.host} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: a ^C on pytest does not race our stop
            )
        _LIVE_PROCESSES[self.process.pid] = self.process
        self.generation += 1
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no answer yet"
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                _LIVE_PROCESSES.pop(self.process.pid, None)
                self.process = None
                raise RegistryStartError(
                    f"registry on {self.host} exited with status {code} during start; log tail:\n{self.log_tail()}"
                )
            try:
                requests.get(f"{self.url}/v2/", timeout=2, verify=self.verify)
                return
            except requests.RequestException as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                self.stop()
                raise RegistryStartError(
                    f"registry on {self.host} did not answer /v2/ ({last_error}); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        _LIVE_PROCESSES.pop(process.pid, None)
        if process.poll() is not None:
            return
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the registry and its token issuer (fixture teardown)."""
        try:
            self.stop()
        finally:
            if self.token_issuer is not None:
                self.token_issuer.stop()

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- garbage collection -------------------------------------------------------------------
    def garbage_collect(
        self, *, delete_untagged: bool = False, dry_run: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the real `docker-registry garbage-collect` on config_path; the caller reads returncode."""
        command = [REGISTRY_BINARY, "garbage-collect"]
        if dry_run:
            command.append("--dry-run")
        if delete_untagged:
            command.append("--delete-untagged")
        command.append(str(self.config_path))
        self.write_config()
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=GC_TIMEOUT, cwd=self.workdir, check=False
        )
        if not dry_run:
            self.generation += 1
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- harness: {' '.join(command)} exited {result.returncode} ---\n")
        return result

    # -- clients -------------------------------------------------------------------------------
    def session(self) -> requests.Session:
        """A plain requests session that trusts this server (credentials are the caller's business)."""
        session = requests.Session()
        session.verify = self.verify
        return session


def _htpasswd_entry(username: str, password: str) -> str:
    # -i: the password goes through stdin, never onto a command line other processes can read.
    result = subprocess.run(
        [HTPASSWD_BINARY, "-nBi", username],
        input=password,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0 or not result.stdout.startswith(f"{username}:$2"):
        raise RegistryStartError(f"htpasswd could not make a bcrypt entry for {username}: {result.stderr.strip()}")
    return result.stdout.strip() + "\n"


def _base_config(storage_root: pathlib.Path, log_level: str) -> dict[str, t.Any]:
    return {
        "version": 0.1,
        "log": {"level": log_level, "formatter": "text", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage_root)},
            "delete": {"enabled": True},
            # The stock default: keeps the post-GC blob-descriptor cache lie reproducible.
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}, "readonly": {"enabled": False}},
        },
        "http": {
            "addr": "127.0.0.1:0",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "health": {"storagedriver": {"enabled": False}},
        # 2.8.2 refuses every foreign-layer URL ("invalid URL on layer") unless an allow list matches;
        # loopback only, so foreign-layer manifests can be pushed and nothing ever fetches them.
        "validation": {"manifests": {"urls": {"allow": [r"^https?://127\.0\.0\.1(:[0-9]+)?/"]}}},
    }


def start_registry(
    workdir: pathlib.Path,
    auth: str = "anonymous",
    *,
    config_overrides: dict[str, t.Any] | None = None,
    log_level: str = "info",
) -> RegistryServer:
    """Make a config for ``auth`` under ``workdir``, start the registry, return it running.

    The caller owns the result and must call ``close()`` (the pytest fixtures do).
    """
    if auth not in (*AUTH_MODES, BASIC_TLS):
        raise ValueError(f"auth must be one of {', '.join((*AUTH_MODES, BASIC_TLS))}, not {auth!r}")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    storage_root = workdir / "storage"
    storage_root.mkdir(exist_ok=True)
    config = _base_config(storage_root, log_level)
    server = RegistryServer(
        workdir=workdir,
        auth=auth,
        port=free_port(),
        storage_root=storage_root,
        config_path=workdir / "config.yml",
        log_path=workdir / "registry.log",
        config=config,
    )

    if auth in ("basic", BASIC_TLS):
        server.username, server.password = "ci-pusher", secrets.token_urlsafe(18)
        server.readonly_username, server.readonly_password = "ci-reader", secrets.token_urlsafe(18)
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(
            _htpasswd_entry(server.username, server.password)
            + _htpasswd_entry(server.readonly_username, server.readonly_password),
            encoding="utf-8",
        )
        htpasswd.chmod(0o600)
        config["auth"] = {"htpasswd": {"realm": "selfhosted-registry-test", "path": str(htpasswd)}}
    elif auth == "token":
        server.username, server.password = "ci-pusher", secrets.token_urlsafe(18)
        server.readonly_username, server.readonly_password = "ci-reader", secrets.token_urlsafe(18)
        issuer = TokenIssuer(
            workdir / "token",
            {
                server.username: TokenUser(server.password, FULL_ACCESS),
                server.readonly_username: TokenUser(server.readonly_password, PULL_ONLY),
            },
        )
        issuer.start()
        server.token_issuer = issuer
        config["auth"] = {
            "token": {
                "realm": issuer.realm,
                "service": issuer.service,
                "issuer": issuer.issuer,
                "rootcertbundle": str(issuer.rootcertbundle),
            }
        }
    if auth in ("tls", BASIC_TLS):
        tls = make_server_tls(workdir / "tls")
        server.ca_path = tls.ca.cert_path
        config["http"]["tls"] = {"certificate": str(tls.server.cert_path), "key": str(tls.server.key_path)}

    if config_overrides:
        server.config = deep_merge(server.config, config_overrides)

    # A port picked free can be taken before the registry binds it: try a few fresh ones.
    for attempt in range(3):
        try:
            server.start()
            return server
        except RegistryStartError:
            if attempt == 2 or "address already in use" not in server.log_tail():
                server.close()
                raise
            server.port = free_port()
    raise AssertionError("unreachable")

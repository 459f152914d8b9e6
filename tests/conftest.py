# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures: real registries on loopback (four auth modes), an image pusher, the incident.

Every registry a fixture starts is stopped by PID at teardown, whether the test passed or not.
A registry that cannot start raises (with its log tail), so the test fails; nothing is skipped.
"""

from __future__ import annotations

import pathlib
import typing as t

import pytest

from tests.harness.images import ImagePusher
from tests.harness.incident import Incident, reproduce_incident
from tests.harness.registry import AUTH_MODES, RegistryServer, start_registry


@pytest.fixture
def make_registry(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Callable[..., RegistryServer]]:
    """``make_registry(auth="anonymous", config_overrides=None)``: start more registries in one test."""
    servers: list[RegistryServer] = []

    def factory(auth: str = "anonymous", *, config_overrides: dict[str, t.Any] | None = None) -> RegistryServer:
        workdir: pathlib.Path = tmp_path_factory.mktemp(f"registry-{auth}")
        server = start_registry(workdir, auth, config_overrides=config_overrides)
        servers.append(server)
        return server

    yield factory
    for server in reversed(servers):
        server.close()


@pytest.fixture
def registry(make_registry: t.Callable[..., RegistryServer]) -> RegistryServer:
    """An anonymous registry over plain HTTP."""
    return make_registry("anonymous")


@pytest.fixture
def registry_basic(make_registry: t.Callable[..., RegistryServer]) -> RegistryServer:
    """htpasswd (bcrypt) auth; ``username``/``password`` and a second ``readonly_*`` user."""
    return make_registry("basic")


@pytest.fixture
def registry_token(make_registry: t.Callable[..., RegistryServer]) -> RegistryServer:
    """Bearer token auth against ``server.token_issuer``; ``readonly_*`` user gets pull only."""
    return make_registry("token")


@pytest.fixture
def registry_tls(make_registry: t.Callable[..., RegistryServer]) -> RegistryServer:
    """Anonymous over HTTPS; trust ``server.ca_path``."""
    return make_registry("tls")


@pytest.fixture(params=AUTH_MODES, ids=list(AUTH_MODES))
def any_registry(request: pytest.FixtureRequest, make_registry: t.Callable[..., RegistryServer]) -> RegistryServer:
    """The same test once per auth mode: anonymous, basic, token, tls."""
    return make_registry(request.param)


@pytest.fixture
def make_pusher() -> t.Iterator[t.Callable[..., ImagePusher]]:
    """``make_pusher(server, username=None, password=None)``: an ImagePusher (server credentials by default)."""
    pushers: list[ImagePusher] = []

    def factory(server: RegistryServer, **kwargs: t.Any) -> ImagePusher:
        pusher = ImagePusher(server, **kwargs)
        pushers.append(pusher)
        return pusher

    yield factory
    for pusher in pushers:
        pusher.session.close()


@pytest.fixture
def pusher(registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher]) -> ImagePusher:
    """An ImagePusher for ``registry``."""
    return make_pusher(registry)


@pytest.fixture
def incident(registry: RegistryServer, pusher: ImagePusher) -> Incident:
    """``infra-ci:latest`` broken by the real `garbage-collect --delete-untagged` on ``registry``."""
    return reproduce_incident(registry, pusher)


@pytest.fixture
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Any]:
    """A real sshd on a free loopback port (tests/harness/sshd.py), stopped by PID at teardown."""
    # Imported here so a problem in one harness module cannot break every other test's collection.
    from tests.harness.sshd import SshServer

    with SshServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def fake_woodpecker() -> t.Iterator[t.Any]:
    """The Woodpecker stand-in (tests/harness/woodpecker_server.py), API v3, plain HTTP on loopback."""
    from tests.harness.woodpecker_server import FakeWoodpecker

    with FakeWoodpecker() as server:
        yield server

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures the integration tests share: the Woodpecker stand-in for the rebuild tests, and the Docker engine
with the execution environment for the tests that run it (AWX jobs, the probe's container commands)."""

from __future__ import annotations

import fcntl
import secrets
import typing as t

import pytest

from tests.harness.awx_docker import DockerDaemon, start_docker
from tests.harness.awx_runner import build_ee
from tests.harness.woodpecker_server import FakeWoodpecker

ENGINE_LOCK = "/run/docker-awx.lock"  # one engine at a time: its socket and data root are fixed


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[DockerDaemon, str]]:
    """A Docker engine on loopback and the EE image built from ee/ (or found current) on it."""
    with open(ENGINE_LOCK, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        daemon = start_docker(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
        try:
            yield daemon, build_ee(daemon)
        finally:
            daemon.stop()


class CI(t.NamedTuple):
    """The Woodpecker stand-in with ops/infra-ci, whose pipeline this test plays, and a token that may push."""

    fake: FakeWoodpecker
    repo_id: int
    token: str


@pytest.fixture
def ci(fake_woodpecker: FakeWoodpecker) -> CI:
    token = secrets.token_urlsafe(24)
    fake_woodpecker.add_user(token)
    repo_id = fake_woodpecker.add_repo("ops", "infra-ci", push=[token])
    # Started, then running for as long as the test thread wants: the thread decides when it ends.
    fake_woodpecker.plan(repo_id, ["pending", "running"],
                         logs={"push-image": ["pushing infra-ci:latest", "unauthorized: push refused"]})
    return CI(fake_woodpecker, repo_id, token)

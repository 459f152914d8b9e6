# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures the rebuild tests share: run by ansible-playbook (test_playbooks_rebuild_ci) and as AWX runs them."""

from __future__ import annotations

import secrets
import typing as t

import pytest

from tests.harness.woodpecker_server import FakeWoodpecker


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

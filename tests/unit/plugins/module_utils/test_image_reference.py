# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image references as playbook authors write them."""

from __future__ import annotations

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._image_reference import (
    ImageReference,
    ImageReferenceError,
    parse_image_reference,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize("text, expected", [
    ("infra-ci:latest", ImageReference("infra-ci", "latest", None)),
    ("infra-ci", ImageReference("infra-ci", "latest", None)),
    (f"infra-ci@{DIGEST}", ImageReference("infra-ci", None, DIGEST)),
    (f"infra-ci:1.2@{DIGEST}", ImageReference("infra-ci", "1.2", DIGEST)),
    ("team/app/api:v1.0_rc-2", ImageReference("team/app/api", "v1.0_rc-2", None)),
    ("registry.example:5000/team/app:v1", ImageReference("team/app", "v1", None)),
    ("REGISTRY.example:5000/team/app", ImageReference("team/app", "latest", None)),
    ("a__b-c--d/e.f:x", ImageReference("a__b-c--d/e.f", "x", None)),
])
def test_valid_references(text: str, expected: ImageReference) -> None:
    assert parse_image_reference(text, "registry.example:5000") == expected


def test_reference_round_trips_and_asks_by_digest_first() -> None:
    reference = parse_image_reference(f"team/app:v1@{DIGEST}")
    assert str(reference) == f"team/app:v1@{DIGEST}"
    assert reference.reference == DIGEST
    assert parse_image_reference("team/app:v1").reference == "v1"


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("   ", "empty"),
    ("Infra-CI:latest", "invalid repository name 'Infra-CI'"),
    ("infra-ci:", "invalid tag ''"),
    ("infra-ci:-bad", "invalid tag '-bad'"),
    ("infra-ci@sha256:abc", "invalid digest 'sha256:abc'"),
    (f"infra-ci@md5:{'a' * 32}", "invalid digest"),
    ("other.example/infra-ci:latest", "names registry 'other.example', but the module talks to 'registry.example:5000'"),
    ("registry.example:5001/infra-ci", "names registry 'registry.example:5001'"),
    ("team//app", "invalid repository name"),
    ("team/app/", "invalid repository name"),
    ("-app", "invalid repository name"),
    ("a" * 256, "invalid repository name"),
    ("app:" + "t" * 129, "invalid tag"),
])
def test_malformed_references_are_one_sentence(text: str, fragment: str) -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_image_reference(text, "registry.example:5000")
    message = str(caught.value)
    assert fragment in message
    assert message.endswith(".") and "\n" not in message

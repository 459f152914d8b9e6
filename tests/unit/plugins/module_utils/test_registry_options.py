# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared registry connection options: argument spec and client construction."""

from __future__ import annotations

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._registry_options import (
    REGISTRY_CONNECTION_ARGUMENT_SPEC,
    build_registry_client,
    registry_connection_argument_spec,
)


def params(**overrides):
    base = {"registry_url": "https://registry.example:5000", "username": None, "password": None,
            "validate_certs": True, "ca_path": None, "timeout": 30}
    base.update(overrides)
    return base


def test_password_is_no_log_and_both_credentials_fall_back_to_the_environment() -> None:
    spec = registry_connection_argument_spec()
    assert spec["password"]["no_log"] is True
    assert spec["username"]["fallback"][1] == ["REGISTRY_USERNAME"]
    assert spec["password"]["fallback"][1] == ["REGISTRY_PASSWORD"]
    assert spec["validate_certs"]["default"] is True


def test_the_spec_is_copied_for_each_module() -> None:
    spec = registry_connection_argument_spec()
    spec["timeout"]["default"] = 5
    spec["extra"] = {"type": "str"}
    assert REGISTRY_CONNECTION_ARGUMENT_SPEC["timeout"]["default"] == 30
    assert "extra" not in REGISTRY_CONNECTION_ARGUMENT_SPEC


@pytest.mark.parametrize("overrides, verify", [
    ({}, True),
    ({"ca_path": "/etc/ssl/registry-ca.pem"}, "/etc/ssl/registry-ca.pem"),
    ({"validate_certs": False, "ca_path": "/etc/ssl/registry-ca.pem"}, False),
])
def test_tls_verification(overrides, verify) -> None:
    client = build_registry_client(params(**overrides), pool_size=3)
    assert client._verify == verify  # pylint: disable=protected-access
    assert client.host == "registry.example:5000" and client.timeout == 30.0


def test_url_path_is_ignored() -> None:
    assert build_registry_client(params(registry_url="https://registry.example/v2/")).base_url == \
        "https://registry.example"

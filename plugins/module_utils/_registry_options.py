# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry connection options shared by every module that talks to the registry API.

The argument spec lives here, next to nothing else, and is documented once in
plugins/doc_fragments/registry_connection.py: keep the two in step.
"""

from __future__ import annotations

import typing as t

from ansible.module_utils.basic import env_fallback

from ._registry_client import RegistryClient

REGISTRY_CONNECTION_ARGUMENT_SPEC: t.Dict[str, t.Dict[str, t.Any]] = dict(
    registry_url=dict(type="str", required=True),
    username=dict(type="str", fallback=(env_fallback, ["REGISTRY_USERNAME"])),
    password=dict(type="str", no_log=True, fallback=(env_fallback, ["REGISTRY_PASSWORD"])),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    timeout=dict(type="int", default=30),
)


def registry_connection_argument_spec() -> t.Dict[str, t.Dict[str, t.Any]]:
    """A fresh copy, so a module may extend it without touching the shared one."""
    return {name: dict(spec) for name, spec in REGISTRY_CONNECTION_ARGUMENT_SPEC.items()}


def build_registry_client(
    params: t.Mapping[str, t.Any], pool_size: int = 8, retry_window: t.Optional[float] = None
) -> RegistryClient:
    """The client for the connection options in ``params`` (raises RegistryError on a bad URL)."""
    verify: t.Union[bool, str] = bool(params["validate_certs"])
    if verify and params.get("ca_path"):
        verify = params["ca_path"]
    extra: t.Dict[str, t.Any] = {} if retry_window is None else {"retry_window": retry_window}
    return RegistryClient(
        params["registry_url"],
        username=params.get("username"),
        password=params.get("password"),
        verify=verify,
        timeout=float(params["timeout"]),
        pool_size=pool_size,
        **extra,
    )

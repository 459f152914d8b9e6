# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A registry reached over https:// never leads the client into plain http://, on the real registry.

Two ways a TLS registry can point elsewhere: its token realm (auth.token) and a blob redirect (the
registry's own `redirect` storage middleware, as object storage in front of it would answer). Neither may
carry the credentials or the request in clear.
"""

from __future__ import annotations

import pathlib
import secrets
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import (
    RegistryClient,
    RegistryError,
)
from tests.harness.registry import RegistryServer
from tests.harness.token_issuer import PULL_ONLY, TokenIssuer, TokenUser
from tests.unit.plugins.module_utils.registry_fakes import LoopbackServer


def test_credentials_are_never_sent_to_a_plain_http_token_realm(
        make_registry: t.Callable[..., RegistryServer], tmp_path: pathlib.Path) -> None:
    password = secrets.token_urlsafe(18)
    issuer = TokenIssuer(tmp_path / "token", {"ci-reader": TokenUser(password, PULL_ONLY)})
    issuer.start()
    try:
        assert issuer.realm.startswith("http://")
        server = make_registry("tls", config_overrides={"auth": {"token": {
            "realm": issuer.realm, "service": issuer.service, "issuer": issuer.issuer,
            "rootcertbundle": str(issuer.rootcertbundle)}}})
        client = RegistryClient(server.url, username="ci-reader", password=password, verify=str(server.ca_path),
                                retries=1, backoff=0.01)
        with pytest.raises(RegistryError) as caught:
            client.ping()
        assert caught.value.message == (
            f"Registry {server.host} asks for tokens from 127.0.0.1:{issuer.port} over plain http://,"
            " where the credentials would travel unencrypted; they were not sent.")
        assert caught.value.says_nothing_about_the_object
        assert password not in caught.value.message
        assert issuer.requests == []  # the token service never heard of the credentials
    finally:
        issuer.stop()


def test_a_blob_redirect_from_https_to_plain_http_is_not_followed(
        make_registry: t.Callable[..., RegistryServer], make_pusher: t.Callable[..., t.Any]) -> None:
    storage = LoopbackServer().start()
    try:
        server = make_registry("tls", config_overrides={"middleware": {"storage": [
            {"name": "redirect", "options": {"baseurl": f"{storage.url}/"}}]}})
        image = make_pusher(server).push_image("app", "v1")
        client = RegistryClient(server.url, verify=str(server.ca_path), retries=1, backoff=0.01)
        layer = image.layer_digests[0]
        what = f"layer blob {layer}"
        # A HEAD proves presence by the redirect alone and follows nothing.
        assert client.check_blob("app", layer, "head", what=what).redirected
        with pytest.raises(RegistryError) as caught:
            client.check_blob("app", layer, "read", what=what)
        assert caught.value.message == (
            f"{what} redirects from https:// to plain http:// (127.0.0.1:{storage.port}), which is not followed.")
        assert caught.value.status == 307 and caught.value.says_nothing_about_the_object
        assert storage.seen == []
    finally:
        storage.stop()

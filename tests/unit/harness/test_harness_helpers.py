# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The harness's pure pieces: scopes and grants, JWT signing, config merging, content and certificates."""

from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import json
import tarfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding

from tests.harness.images import _diff_id, make_layer, parse_platform, sha256_digest
from tests.harness.registry import deep_merge
from tests.harness.tls import make_server_tls
from tests.harness.token_issuer import FULL_ACCESS, PULL_ONLY, TokenIssuer, TokenUser, parse_scope


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    return TokenIssuer(
        tmp_path_factory.mktemp("issuer"),
        {"writer": TokenUser("w-secret", FULL_ACCESS), "reader": TokenUser("r-secret", PULL_ONLY)},
    )


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("repository:infra-ci:pull", ("repository", "infra-ci", ("pull",))),
        ("repository:team/app/api:pull,push", ("repository", "team/app/api", ("pull", "push"))),
        ("repository:127.0.0.1:5000/app:pull", ("repository", "127.0.0.1:5000/app", ("pull",))),
        ("registry:catalog:*", ("registry", "catalog", ("*",))),
        ("repository", None),
        ("repository:pull", None),
        (":name:pull", None),
    ],
)
def test_parse_scope(scope, expected):
    assert parse_scope(scope) == expected


def test_grants_are_the_intersection_of_asked_and_allowed(issuer):
    asked = ["repository:app:pull,push,delete", "registry:catalog:*", "unknown:thing:read"]
    assert issuer.grant("writer", asked) == [
        {"type": "repository", "name": "app", "actions": ["pull", "push", "delete"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    assert issuer.grant("reader", asked) == [{"type": "repository", "name": "app", "actions": ["pull"]}]
    assert issuer.grant("reader", ["repository:app:push"]) == []


def test_issued_jwt_is_signed_by_the_certificate_in_the_bundle(issuer):
    access = [{"type": "repository", "name": "app", "actions": ["pull"]}]
    token = issuer.issue("reader", access, expires_in=120)
    header_b64, claims_b64, signature_b64 = token.split(".")
    header = json.loads(_b64decode(header_b64))
    claims = json.loads(_b64decode(claims_b64))
    bundle = x509.load_pem_x509_certificate(issuer.rootcertbundle.read_bytes())
    assert header["alg"] == "RS256"
    assert base64.b64decode(header["x5c"][0]) == bundle.public_bytes(Encoding.DER)
    bundle.public_key().verify(
        _b64decode(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert claims["iss"] == issuer.issuer and claims["aud"] == issuer.service and claims["sub"] == "reader"
    assert claims["exp"] - claims["iat"] == 120 and claims["nbf"] <= claims["iat"]
    assert claims["access"] == access


def test_authentication_checks_the_password(issuer):
    def basic(user, password):
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert issuer._authenticate(basic("writer", "w-secret")) == ("writer", True)
    assert issuer._authenticate(basic("writer", "r-secret")) == ("writer", False)
    assert issuer._authenticate(basic("nobody", "x")) == ("nobody", False)
    assert issuer._authenticate("Basic not-base64!") == (None, False)
    assert issuer._authenticate("Bearer abc") == (None, False)
    assert issuer._authenticate(None) == (None, False)


def test_deep_merge_merges_nested_removes_none_and_leaves_base_alone():
    base = {"storage": {"cache": {"blobdescriptor": "inmemory"}, "delete": {"enabled": True}}, "log": {"level": "info"}}
    merged = deep_merge(base, {"storage": {"cache": None, "delete": {"enabled": False}}, "http": {"addr": "x"}})
    assert merged == {"storage": {"delete": {"enabled": False}}, "log": {"level": "info"}, "http": {"addr": "x"}}
    assert base["storage"]["cache"] == {"blobdescriptor": "inmemory"}


def test_layers_are_reproducible_gzip_tars():
    first, again, other = make_layer("a"), make_layer("a"), make_layer("b")
    assert first == again != other
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        assert tar.extractfile("payload.txt").read() == b"a"
    assert _diff_id(first) == sha256_digest(gzip.decompress(first))
    assert _diff_id(b"{not gzip}") == sha256_digest(b"{not gzip}")


def test_parse_platform():
    assert parse_platform("linux/arm64/v8") == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert parse_platform("windows/amd64") == {"architecture": "amd64", "os": "windows"}
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(ValueError):
            parse_platform(bad)


def test_server_certificate_is_issued_by_the_ca_for_loopback_names(tmp_path):
    tls = make_server_tls(tmp_path)
    tls.server.certificate.verify_directly_issued_by(tls.ca.certificate)
    sans = tls.server.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert oct(tls.server.key_path.stat().st_mode & 0o777) == "0o600"

# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry client against loopback servers that misbehave on purpose."""

from __future__ import annotations

import base64
import json
import pathlib
import socket
import time
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import (
    CATALOG_SCOPE,
    MANIFEST_ACCEPT,
    MAX_MANIFEST_BYTES,
    RegistryClient,
    RegistryError,
)
from tests.unit.plugins.module_utils.registry_fakes import (
    OCI_MANIFEST,
    LoopbackServer,
    Reply,
    Seen,
    digest_of,
    json_reply,
    manifest_reply,
)

SECRET = "s3cr3t-Pa55-never-shown"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()


@pytest.fixture
def server() -> t.Iterator[LoopbackServer]:
    srv = LoopbackServer().start()
    srv.routes["/v2/"] = lambda seen: json_reply(200, {})
    yield srv
    srv.stop()


@pytest.fixture
def other_server() -> t.Iterator[LoopbackServer]:
    srv = LoopbackServer().start()
    yield srv
    srv.stop()


def client_for(server: LoopbackServer, **kwargs: t.Any) -> RegistryClient:
    kwargs.setdefault("backoff", 0.01)
    return RegistryClient(server.url, **kwargs)


# -- manifests ------------------------------------------------------------------------------


def test_manifest_request_sends_all_four_types_and_checks_the_digest(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST)
    manifest = client_for(server).get_manifest("app", "v1")
    assert manifest.digest == digest_of(MANIFEST)
    assert manifest.media_type == OCI_MANIFEST
    accept = server.requests_to("/manifests/v1")[0].headers["Accept"]
    assert accept == MANIFEST_ACCEPT
    for media_type in ("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json",
                       "application/vnd.docker.distribution.manifest.v2+json"):
        assert media_type in accept


def test_manifest_whose_body_does_not_match_the_digest_asked_for(server: LoopbackServer) -> None:
    wanted = "sha256:" + "a" * 64
    server.routes[f"/v2/app/manifests/{wanted}"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST, wanted)
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", wanted)
    assert "not the one asked for" in caught.value.message
    assert digest_of(MANIFEST) in caught.value.message


def test_manifest_whose_header_digest_lies(server: LoopbackServer) -> None:
    claimed = "sha256:" + "b" * 64
    server.routes["/v2/app/manifests/v1"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST, claimed)
    with pytest.raises(RegistryError, match="the registry claims " + claimed):
        client_for(server).get_manifest("app", "v1")


def test_html_instead_of_a_manifest_is_one_clear_error(server: LoopbackServer) -> None:
    html = Reply(200, b"<html><body>Login</body></html>", {"Content-Type": "text/html"})
    server.routes["/v2/app/manifests/v1"] = lambda seen: html
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.message == f"manifest app:v1 ({digest_of(html.body)}) is not JSON (text/html)."


def test_oversized_manifest_is_refused_by_its_declared_length(server: LoopbackServer) -> None:
    big = b"{" + b" " * (MAX_MANIFEST_BYTES + 10) + b"}"
    server.routes["/v2/app/manifests/v1"] = lambda seen: manifest_reply(big, OCI_MANIFEST)
    with pytest.raises(RegistryError, match="larger than the 4 MiB"):
        client_for(server).get_manifest("app", "v1")


def test_oversized_manifest_without_a_length_is_refused_while_reading(server: LoopbackServer) -> None:
    big = b"{" + b" " * (MAX_MANIFEST_BYTES + 10) + b"}"
    # No Content-Length: the body ends when the connection closes.
    server.routes["/v2/app/manifests/v1"] = lambda seen: Reply(
        200, big, {"Content-Type": OCI_MANIFEST, "Content-Length": "", "Connection": "close"})
    with pytest.raises(RegistryError, match="larger than the 4 MiB"):
        client_for(server).get_manifest("app", "v1")


def test_missing_manifest_carries_status_and_error_code(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: json_reply(
        404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert (caught.value.status, caught.value.error_code) == (404, "MANIFEST_UNKNOWN")
    assert caught.value.message == "manifest app:v1 answered 404 MANIFEST_UNKNOWN."


def test_repository_path_segments_are_quoted(server: LoopbackServer) -> None:
    server.routes["/v2/team/app/api/manifests/v1"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST)
    assert client_for(server).get_manifest("team/app/api", "v1").digest == digest_of(MANIFEST)


# -- retries --------------------------------------------------------------------------------


def test_429_with_retry_after_is_retried_then_succeeds(server: LoopbackServer) -> None:
    answers = iter([
        json_reply(429, {"errors": [{"code": "TOOMANYREQUESTS"}]}, {"Retry-After": "1"}),
        manifest_reply(MANIFEST, OCI_MANIFEST),
    ])
    server.routes["/v2/app/manifests/v1"] = lambda seen: next(answers)
    client = client_for(server)
    assert client.get_manifest("app", "v1").digest == digest_of(MANIFEST)
    assert len(server.requests_to("/manifests/v1")) == 2


def test_huge_retry_after_is_clamped(server: LoopbackServer) -> None:
    answers = iter([json_reply(503, {}, {"Retry-After": "86400"}), manifest_reply(MANIFEST, OCI_MANIFEST)])
    server.routes["/v2/app/manifests/v1"] = lambda seen: next(answers)
    # Unclamped this would wait a day; the test would hang rather than pass.
    assert client_for(server, max_retry_after=0.05).get_manifest("app", "v1").media_type == OCI_MANIFEST


def test_persistent_5xx_gives_up_after_the_retries(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: json_reply(503, {"errors": [{"code": "UNAVAILABLE"}]})
    with pytest.raises(RegistryError) as caught:
        client_for(server, retries=2).get_manifest("app", "v1")
    assert caught.value.status == 503
    assert len(server.requests_to("/manifests/v1")) == 3


def test_404_is_not_retried(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: json_reply(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]})
    with pytest.raises(RegistryError):
        client_for(server).get_manifest("app", "v1")
    assert len(server.requests_to("/manifests/v1")) == 1


def test_unreachable_registry_is_one_sentence() -> None:
    from tests.harness.registry import free_port

    port = free_port()
    client = RegistryClient(f"http://127.0.0.1:{port}", username="u", password=SECRET, retries=1, backoff=0.01)
    with pytest.raises(RegistryError) as caught:
        client.ping()
    assert caught.value.message == f"Could not reach the v2 API of 127.0.0.1:{port} at 127.0.0.1:{port}: connection refused."
    assert SECRET not in caught.value.message
    assert client.request_count == 2


def test_a_missing_ca_file_is_named(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "registry-ca.pem"
    with socket.socket() as listener:  # TLS never starts: the CA file is read first
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(RegistryError) as caught:
            RegistryClient(f"https://127.0.0.1:{port}", verify=str(missing)).ping()
    assert caught.value.message == (
        f"Could not reach the v2 API of 127.0.0.1:{port} at 127.0.0.1:{port}: the CA file {missing} does not exist."
    )


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(RegistryError) as caught:
        RegistryClient(f"https://user:{SECRET}@registry.example")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("url, problem", [
    ("registry.example:5000", "is not an http:// or https:// URL with a host"),
    ("ftp://registry.example", "is not an http:// or https:// URL with a host"),
    ("http://", "is not an http:// or https:// URL with a host"),
    ("http://registry.example:port", "has a port that is not a number"),
])
def test_url_must_be_http_with_a_host_and_a_port_number(url: str, problem: str) -> None:
    with pytest.raises(RegistryError) as caught:
        RegistryClient(url)
    assert caught.value.message == f"Registry URL {url!r} {problem}."


@pytest.mark.parametrize("url", [f"ftp://u:{SECRET}@registry.example", f"http://u:{SECRET}@registry.example:port"])
def test_credentials_in_any_bad_url_are_never_echoed(url: str) -> None:
    with pytest.raises(RegistryError) as caught:
        RegistryClient(url)
    assert SECRET not in caught.value.message


# -- blobs and redirects ----------------------------------------------------------------------

BLOB = "sha256:" + "c" * 64


def test_blob_head_307_counts_as_present_and_is_not_followed(
    server: LoopbackServer, other_server: LoopbackServer
) -> None:
    server.routes[f"/v2/app/blobs/{BLOB}"] = lambda seen: Reply(307, b"", {"Location": f"{other_server.url}/obj"})
    check = client_for(server, username="u", password=SECRET).check_blob("app", BLOB, "head")
    assert check.redirected and check.status == 307
    assert other_server.seen == []


def test_blob_read_follows_a_redirect_to_another_host_without_credentials(
    server: LoopbackServer, other_server: LoopbackServer
) -> None:
    def protected(seen: Seen) -> Reply:
        if "Authorization" not in seen.headers:
            return Reply(401, b"", {"WWW-Authenticate": 'Basic realm="test"'})
        return Reply(307, b"", {"Location": f"{other_server.url}/bucket/object?signature=x"})

    server.routes[f"/v2/app/blobs/{BLOB}"] = protected
    other_server.routes["/bucket/object"] = lambda seen: Reply(206, b"x", {"Content-Range": "bytes 0-0/42"})
    check = client_for(server, username="u", password=SECRET).check_blob("app", BLOB, "read")
    assert (check.status, check.size, check.redirected) == (206, 42, True)
    arrived = other_server.requests_to("/bucket/object")
    assert len(arrived) == 1
    assert "Authorization" not in arrived[0].headers
    assert arrived[0].headers["Range"] == "bytes=0-0"
    # The registry itself did get the credentials.
    sent = server.requests_to(f"/blobs/{BLOB}")[-1].headers["Authorization"]
    assert base64.b64decode(sent.split()[1]).decode() == f"u:{SECRET}"


def test_redirects_to_several_other_hosts_leave_the_registry_reachable(
    server: LoopbackServer, other_server: LoopbackServer
) -> None:
    # Object storage may answer from more hosts than the client keeps connections for: the registry's
    # own must survive the others coming and going (the transport never evicts the registry's origin).
    third = LoopbackServer().start()
    try:
        for number, storage in enumerate((other_server, third, other_server)):
            digest = "sha256:" + str(number) * 64
            server.routes[f"/v2/app/blobs/{digest}"] = (
                lambda seen, url=storage.url: Reply(307, b"", {"Location": f"{url}/object"}))
        for storage in (other_server, third):
            storage.routes["/object"] = lambda seen: Reply(206, b"x", {"Content-Range": "bytes 0-0/42"})
        server.routes["/v2/app/manifests/v1"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST)
        client = client_for(server)
        for number in range(3):
            assert client.check_blob("app", "sha256:" + str(number) * 64, "read").redirected
            assert client.get_manifest("app", "v1").body == MANIFEST
    finally:
        third.stop()


def test_blob_read_with_no_body_is_the_cache_lie(server: LoopbackServer) -> None:
    # What 2.8 does after GC on a running registry: full headers, then nothing.
    server.routes[f"/v2/app/blobs/{BLOB}"] = lambda seen: Reply(200, b"", {"Content-Length": "170"}, cut_body=True)
    with pytest.raises(RegistryError) as caught:
        client_for(server).check_blob("app", BLOB, "read", what=f"layer blob {BLOB}")
    assert caught.value.message.startswith(f"layer blob {BLOB} answered 200 but sent no content")
    assert caught.value.status == 200
    # The same lie passes a HEAD check: that is why the read mode exists.
    assert client_for(server).check_blob("app", BLOB, "head").status == 200


def test_connections_are_kept_and_an_answer_left_unread_is_dropped(server: LoopbackServer) -> None:
    # A registry that ignores Range sends the whole blob: after its first byte the rest is still on the
    # connection, which must be dropped, never handed to the next request. Answers read to their end keep it.
    server.routes[f"GET /v2/app/blobs/{BLOB}"] = lambda seen: Reply(200, b"x" * 4096)
    server.routes["/v2/app/manifests/v1"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST)
    client = client_for(server)
    for unused in range(2):
        assert client.check_blob("app", BLOB, "read").size == 4096
        assert client.get_manifest("app", "v1").body == MANIFEST
    client.close()
    assert client.request_count == len(server.seen) == 4
    # Blob read (dropped), manifest on a new connection, blob read on that one (dropped), manifest on a third.
    assert server.connections == 3


def test_missing_blob_head_fetches_the_error_code(server: LoopbackServer) -> None:
    server.routes[f"/v2/app/blobs/{BLOB}"] = lambda seen: json_reply(
        404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})
    with pytest.raises(RegistryError) as caught:
        client_for(server).check_blob("app", BLOB, "head")
    assert (caught.value.status, caught.value.error_code) == (404, "BLOB_UNKNOWN")
    assert [s.method for s in server.requests_to("/blobs/")] == ["HEAD", "GET"]


# -- auth -----------------------------------------------------------------------------------


def _basic_protected(user: str, password: str) -> t.Callable[[Seen], Reply]:
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def handler(seen: Seen) -> Reply:
        if seen.headers.get("Authorization") != expected:
            return json_reply(401, {"errors": [{"code": "UNAUTHORIZED"}]},
                              {"WWW-Authenticate": 'Basic realm="Registry Realm"'})
        return json_reply(200, {})

    return handler


def test_basic_auth_after_the_challenge(server: LoopbackServer) -> None:
    server.routes["/v2/"] = _basic_protected("u", SECRET)
    client = client_for(server, username="u", password=SECRET)
    client.ping()
    client.ping()
    # One challenge, then credentials go with every request.
    assert [("Authorization" in s.headers) for s in server.seen] == [False, True, True]


def test_rejected_basic_credentials_never_show_the_password(server: LoopbackServer) -> None:
    server.routes["/v2/"] = _basic_protected("u", "right")
    client = client_for(server, username="u", password=SECRET)
    with pytest.raises(RegistryError) as caught:
        client.ping()
    assert caught.value.message == f"Registry 127.0.0.1:{server.port} rejected the credentials for the v2 API of 127.0.0.1:{server.port}."
    assert caught.value.status == 401
    for text in (str(caught.value), repr(caught.value), repr(client), repr(vars(caught.value))):
        assert SECRET not in text


def test_anonymous_client_on_a_protected_registry(server: LoopbackServer) -> None:
    server.routes["/v2/"] = _basic_protected("u", SECRET)
    with pytest.raises(RegistryError, match="requires credentials"):
        client_for(server).ping()


class TokenService:
    """A bearer realm on the same loopback server: counts token requests per scope."""

    def __init__(self, server: LoopbackServer, expires_in: t.Optional[int] = None):
        self.server = server
        self.issued: t.List[str] = []
        self.expires_in = expires_in
        server.routes["/token"] = self.token

    @property
    def challenge(self) -> str:
        return f'Bearer realm="{self.server.url}/token",service="test-registry"'

    def token(self, seen: Seen) -> Reply:
        if seen.headers.get("Authorization") != "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode():
            return json_reply(401, {"details": "bad credentials"})
        query = dict(part.split("=", 1) for part in seen.path.split("?", 1)[1].split("&"))
        scope = query.get("scope", "").replace("%3A", ":").replace("%2A", "*").replace("%2F", "/")
        self.issued.append(scope)
        payload: t.Dict[str, t.Any] = {"token": f"tok-{len(self.issued)}|{scope}"}
        if self.expires_in is not None:
            payload["expires_in"] = self.expires_in
        return json_reply(200, payload)

    def protect(self, path: str, scope: str, reply: t.Callable[[Seen], Reply]) -> None:
        def handler(seen: Seen) -> Reply:
            auth = seen.headers.get("Authorization", "")
            if not (auth.startswith("Bearer tok-") and auth.endswith("|" + scope)):
                return json_reply(401, {"errors": [{"code": "UNAUTHORIZED"}]},
                                  {"WWW-Authenticate": self.challenge + f',scope="{scope}"'})
            return reply(seen)

        self.server.routes[path] = handler


def test_bearer_tokens_are_cached_per_scope(server: LoopbackServer) -> None:
    tokens = TokenService(server)
    tokens.protect("/v2/", "", lambda seen: json_reply(200, {}))
    for repository in ("app", "team/api"):
        for reference in ("v1", "v2"):
            tokens.protect(f"/v2/{repository}/manifests/{reference}", f"repository:{repository}:pull",
                           lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST))
    tokens.protect("/v2/_catalog?n=1000", CATALOG_SCOPE, lambda seen: json_reply(200, {"repositories": ["app"]}))
    client = client_for(server, username="u", password=SECRET)
    client.ping()
    for repository in ("app", "team/api"):
        for reference in ("v1", "v2"):
            client.get_manifest(repository, reference)
    assert client.list_repositories() == ["app"]
    assert tokens.issued == ["", "repository:app:pull", "repository:team/api:pull", CATALOG_SCOPE]


def test_tokens_are_reused_until_they_expire(server: LoopbackServer) -> None:
    tokens = TokenService(server)  # no expires_in: 60 seconds
    tokens.protect("/v2/app/manifests/v1", "repository:app:pull", lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST))
    now = [1000.0]
    client = client_for(server, username="u", password=SECRET, clock=lambda: now[0])
    client.get_manifest("app", "v1")
    now[0] += 30
    client.get_manifest("app", "v1")
    assert tokens.issued == ["repository:app:pull"]
    now[0] += 31  # past the 60 s default lifetime
    client.get_manifest("app", "v1")
    assert tokens.issued == ["repository:app:pull"] * 2
    tokens.expires_in = 300
    now[0] += 100
    client.get_manifest("app", "v1")
    now[0] += 200
    client.get_manifest("app", "v1")
    assert tokens.issued == ["repository:app:pull"] * 3


def test_a_token_the_registry_refuses_is_replaced_once(server: LoopbackServer) -> None:
    tokens = TokenService(server)
    refused = {"tok-1|repository:app:pull"}  # e.g. expired early on the registry's clock
    tokens.protect("/v2/app/manifests/v1", "repository:app:pull", lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST))
    guarded = server.routes["/v2/app/manifests/v1"]
    server.routes["/v2/app/manifests/v1"] = lambda seen: (
        json_reply(401, {}, {"WWW-Authenticate": tokens.challenge + ',scope="repository:app:pull"'})
        if seen.headers.get("Authorization", "")[len("Bearer "):] in refused else guarded(seen))
    client = client_for(server, username="u", password=SECRET)
    assert client.get_manifest("app", "v1").digest == digest_of(MANIFEST)
    assert tokens.issued == ["repository:app:pull"] * 2
    refused.add("tok-2|repository:app:pull")
    refused.add("tok-3|repository:app:pull")
    with pytest.raises(RegistryError, match="rejected the credentials"):
        client.get_manifest("app", "v1")
    assert len(tokens.issued) == 3


def test_token_service_rejecting_credentials(server: LoopbackServer) -> None:
    tokens = TokenService(server)
    tokens.protect("/v2/", "", lambda seen: json_reply(200, {}))
    client = client_for(server, username="u", password="wrong-" + SECRET)
    with pytest.raises(RegistryError) as caught:
        client.ping()
    assert caught.value.message == f"The token service 127.0.0.1:{server.port} rejected the credentials (HTTP 401)."
    assert SECRET not in repr(caught.value)


# -- listings -------------------------------------------------------------------------------


def test_catalog_follows_relative_links(server: LoopbackServer) -> None:
    server.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(
        200, {"repositories": ["a", "b"]}, {"Link": '</v2/_catalog?last=b&n=1000>; rel="next"'})
    server.routes["/v2/_catalog?last=b&n=1000"] = lambda seen: json_reply(
        200, {"repositories": ["c"]}, {"Link": '</v2/_catalog?last=c&n=1000>; rel="next"'})
    server.routes["/v2/_catalog?last=c&n=1000"] = lambda seen: json_reply(200, {"repositories": []})
    assert client_for(server).list_repositories() == ["a", "b", "c"]


def test_catalog_link_loop_is_stopped(server: LoopbackServer) -> None:
    server.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(
        200, {"repositories": ["a"]}, {"Link": '</v2/_catalog?last=a&n=1000>; rel="next"'})
    server.routes["/v2/_catalog?last=a&n=1000"] = lambda seen: json_reply(
        200, {"repositories": ["b"]}, {"Link": '</v2/_catalog?n=1000>; rel="next"'})
    with pytest.raises(RegistryError, match="loops back to a page already read"):
        client_for(server).list_repositories()
    assert len(server.requests_to("/_catalog")) == 2


def test_catalog_link_to_another_host_is_refused(server: LoopbackServer, other_server: LoopbackServer) -> None:
    server.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(
        200, {"repositories": ["a"]}, {"Link": f'<{other_server.url}/v2/_catalog?last=a>; rel="next"'})
    with pytest.raises(RegistryError, match="points its next page to another host"):
        client_for(server, username="u", password=SECRET).list_repositories()
    assert other_server.seen == []


def test_tags_null_is_an_empty_list(server: LoopbackServer) -> None:
    server.routes["/v2/app/tags/list"] = lambda seen: json_reply(200, {"name": "app", "tags": None})
    assert client_for(server).list_tags("app") == []


@pytest.mark.parametrize("reply", [
    Reply(200, b"<html>proxy error</html>", {"Content-Type": "text/html"}),
    json_reply(200, ["not", "an", "object"]),
    json_reply(200, {"name": "app"}),
    json_reply(200, {"name": "app", "tags": [1, 2]}),
], ids=["html", "array", "no-key", "not-names"])
def test_garbage_tag_lists_are_one_clear_error(server: LoopbackServer, reply: Reply) -> None:
    server.routes["/v2/app/tags/list"] = lambda seen: reply
    with pytest.raises(RegistryError) as caught:
        client_for(server).list_tags("app")
    assert caught.value.message.startswith("The tag list of app of 127.0.0.1:")
    assert "\n" not in caught.value.message


def test_request_count_includes_retries_and_challenges(server: LoopbackServer) -> None:
    server.routes["/v2/"] = _basic_protected("u", SECRET)
    answers = iter([json_reply(502, {}), manifest_reply(MANIFEST, OCI_MANIFEST)])
    server.routes["/v2/app/manifests/v1"] = lambda seen: next(answers)
    client = client_for(server, username="u", password=SECRET)
    client.ping()
    client.get_manifest("app", "v1")
    assert client.request_count == len(server.seen) == 4


# -- misbehaving transports -------------------------------------------------------------------


def test_a_server_that_drips_its_headers_is_abandoned_at_the_timeout(server: LoopbackServer) -> None:
    # 0.05 s a byte keeps every socket read far below the 1 s timeout, yet the answer takes about 10 s in all.
    server.routes["/v2/app/manifests/v1"] = lambda seen: Reply(
        200, MANIFEST, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest_of(MANIFEST)}, drip=0.05)
    with pytest.raises(RegistryError) as caught:
        client_for(server, timeout=1).get_manifest("app", "v1")
    assert caught.value.message == (
        f"manifest app:v1 at 127.0.0.1:{server.port} did not answer completely within the 1-second timeout.")
    assert caught.value.status is None and caught.value.says_nothing_about_the_object
    # A server too slow to answer is not asked again: the next try would be as slow.
    assert len(server.requests_to("/manifests/v1")) == 1


def test_a_server_that_drips_its_body_is_abandoned_at_the_timeout(server: LoopbackServer) -> None:
    body = MANIFEST + b" " * 200
    server.routes["/v2/app/manifests/v1"] = lambda seen: Reply(
        200, body, {"Content-Type": OCI_MANIFEST}, drip=0.05, drip_body_only=True)
    with pytest.raises(RegistryError, match="did not answer completely within the 1-second timeout"):
        client_for(server, timeout=1).get_manifest("app", "v1")


def test_a_blob_read_that_drips_is_abandoned_at_the_timeout(server: LoopbackServer) -> None:
    server.routes[f"/v2/app/blobs/{BLOB}"] = lambda seen: Reply(
        206, b"x", {"Content-Range": "bytes 0-0/42"}, drip=0.05)
    with pytest.raises(RegistryError) as caught:
        client_for(server, timeout=1).check_blob("app", BLOB, "read")
    assert "did not answer completely within the 1-second timeout" in caught.value.message
    assert caught.value.says_nothing_about_the_object


def test_a_manifest_body_cut_short_once_is_read_again(server: LoopbackServer) -> None:
    answers = iter([
        Reply(200, MANIFEST, {"Content-Type": OCI_MANIFEST}, cut_body=True, cut_after=10),
        manifest_reply(MANIFEST, OCI_MANIFEST),
    ])
    server.routes["/v2/app/manifests/v1"] = lambda seen: next(answers)
    assert client_for(server).get_manifest("app", "v1").digest == digest_of(MANIFEST)
    assert len(server.requests_to("/manifests/v1")) == 2


def test_a_manifest_body_always_cut_short_is_not_verified_not_broken(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: Reply(
        200, MANIFEST, {"Content-Type": OCI_MANIFEST}, cut_body=True, cut_after=10)
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.message == "manifest app:v1 could not be read completely (the answer was cut short)."
    assert caught.value.says_nothing_about_the_object
    assert len(server.requests_to("/manifests/v1")) == 3


def test_a_blob_read_cut_short_once_is_read_again(server: LoopbackServer) -> None:
    answers = iter([
        Reply(206, b"x", {"Content-Range": "bytes 0-0/42"}, cut_body=True),
        Reply(206, b"x", {"Content-Range": "bytes 0-0/42"}),
    ])
    server.routes[f"/v2/app/blobs/{BLOB}"] = lambda seen: next(answers)
    check = client_for(server).check_blob("app", BLOB, "read")
    assert (check.status, check.size) == (206, 42)
    assert len(server.requests_to("/blobs/")) == 2


def test_a_tag_list_cut_short_once_is_read_again(server: LoopbackServer) -> None:
    answers = iter([
        Reply(200, b'{"name": "app", "tags": ["v1", "v2"]}', {}, cut_body=True, cut_after=12),
        json_reply(200, {"name": "app", "tags": ["v1", "v2"]}),
    ])
    server.routes["/v2/app/tags/list"] = lambda seen: next(answers)
    assert client_for(server).list_tags("app") == ["v1", "v2"]


def test_a_restart_longer_than_a_few_retries_is_ridden_out(server: LoopbackServer) -> None:
    # Six 503s in a row: what a registry behind a proxy answers while it restarts.
    answers = iter([json_reply(503, {"errors": [{"code": "UNAVAILABLE"}]})] * 6 + [manifest_reply(MANIFEST, OCI_MANIFEST)])
    server.routes["/v2/app/manifests/v1"] = lambda seen: next(answers)
    assert client_for(server, retry_window=30).get_manifest("app", "v1").digest == digest_of(MANIFEST)
    assert len(server.requests_to("/manifests/v1")) == 7


def test_retries_end_with_the_window_and_an_outage_is_waited_out_once(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: json_reply(503, {"errors": [{"code": "UNAVAILABLE"}]})
    server.routes["/v2/app/manifests/v2"] = server.routes["/v2/app/manifests/v1"]
    client = client_for(server, retry_window=0.5, backoff=0.05)
    with pytest.raises(RegistryError) as caught:
        client.get_manifest("app", "v1")
    assert caught.value.status == 503
    assert len(server.requests_to("/manifests/v1")) > 1
    time.sleep(0.5)  # the window is surely over now
    # The registry has been failing for the whole window: the next object is asked once, not waited for again.
    with pytest.raises(RegistryError):
        client.get_manifest("app", "v2")
    assert len(server.requests_to("/manifests/v2")) == 1


def test_retry_after_beyond_the_window_is_not_waited_for(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: json_reply(429, {}, {"Retry-After": "5"})
    with pytest.raises(RegistryError) as caught:
        client_for(server, retry_window=1).get_manifest("app", "v1")
    assert caught.value.status == 429
    assert len(server.requests_to("/manifests/v1")) == 1


def test_a_redirect_to_an_unsupported_scheme_says_so(server: LoopbackServer) -> None:
    server.routes[f"/v2/app/blobs/{BLOB}"] = lambda seen: Reply(307, b"", {"Location": "ftp://storage.example/obj"})
    with pytest.raises(RegistryError) as caught:
        client_for(server).check_blob("app", BLOB, "read", what=f"layer blob {BLOB}")
    assert caught.value.message == (
        f"layer blob {BLOB} redirects to an ftp URL, which cannot be followed (only http and https can).")
    assert caught.value.says_nothing_about_the_object


def test_endless_redirects_say_so(server: LoopbackServer) -> None:
    server.routes[f"/v2/app/blobs/{BLOB}"] = lambda seen: Reply(302, b"", {"Location": f"/v2/app/blobs/{BLOB}"})
    with pytest.raises(RegistryError) as caught:
        client_for(server).check_blob("app", BLOB, "read", what=f"layer blob {BLOB}")
    assert caught.value.message == f"layer blob {BLOB} kept redirecting (more than 5 redirects)."
    assert caught.value.says_nothing_about_the_object


def test_a_manifest_that_redirects_says_it_is_not_followed(server: LoopbackServer) -> None:
    server.routes["/v2/app/manifests/v1"] = lambda seen: Reply(302, b"", {"Location": "https://login.example/"})
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.message == (
        "manifest app:v1 answered a redirect (HTTP 302 to login.example), which is not followed.")
    assert caught.value.says_nothing_about_the_object


def test_errors_after_the_body_was_hashed_carry_its_digest(server: LoopbackServer) -> None:
    html = b"<html><body>Login</body></html>"
    server.routes["/v2/app/manifests/v1"] = lambda seen: Reply(200, html, {"Content-Type": "text/html"})
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.digest == digest_of(html)
    claimed = "sha256:" + "b" * 64
    server.routes["/v2/app/manifests/v2"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST, claimed)
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v2")
    assert caught.value.digest == digest_of(MANIFEST)  # what the tag answered, never the claim it disproves


@pytest.mark.parametrize("claim", ["sha256:" + "b" * 64, "sha256:not-a-digest", "sha256:" + "B" * 64])
def test_a_manifest_asked_for_by_digest_keeps_that_digest_whatever_the_header_claims(
        server: LoopbackServer, claim: str) -> None:
    wanted = digest_of(MANIFEST)
    server.routes[f"/v2/app/manifests/{wanted}"] = lambda seen: manifest_reply(MANIFEST, OCI_MANIFEST, claim)
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", wanted, what=f"child manifest {wanted}")
    assert caught.value.digest == wanted
    assert caught.value.message.startswith(f"child manifest {wanted} ")
    assert caught.value.status == 200 and not caught.value.says_nothing_about_the_object


def test_an_oversized_manifest_without_a_length_still_names_its_digest(server: LoopbackServer) -> None:
    big = b"{" + b" " * (MAX_MANIFEST_BYTES + 10) + b"}"
    wanted = "sha256:" + "d" * 64
    claimed = "sha256:" + "e" * 64
    for reference, header, expected in ((wanted, claimed, wanted), ("v1", claimed, claimed), ("v2", "garbage", None)):
        server.routes[f"/v2/app/manifests/{reference}"] = lambda seen, header=header: Reply(
            200, big, {"Content-Type": OCI_MANIFEST, "Content-Length": "", "Connection": "close",
                       "Docker-Content-Digest": header})
        with pytest.raises(RegistryError, match="larger than the 4 MiB") as caught:
            client_for(server).get_manifest("app", reference)
        assert caught.value.digest == expected, reference

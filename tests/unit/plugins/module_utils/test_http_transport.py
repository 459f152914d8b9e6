# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client's HTTP/1.1 against a loopback socket that answers raw bytes: framing, keep-alive, garbage."""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import threading
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._http_transport import Transport
from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import RegistryClient, RegistryError
from tests.harness.tls import ServerTLS, make_server_tls
from tests.unit.plugins.module_utils.registry_fakes import OCI_MANIFEST, digest_of

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()

# Given the request line, the raw answer to send, and whether to close the connection after it.
Script = t.Callable[[str], t.Tuple[bytes, bool]]


class RawServer:
    """Accepts connections on 127.0.0.1 and answers each request with the bytes ``script`` returns."""

    def __init__(self, script: Script, answers_per_connection: t.Optional[int] = None,
                 tls: t.Optional[ssl.SSLContext] = None):
        self.script = script
        self.tls = tls
        # After this many answers on a connection, the next request on it is met by closing it unanswered.
        self.answers_per_connection = answers_per_connection
        self.connections = 0
        self.heads: t.List[t.List[str]] = []  # each request's request line and header lines
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def request_lines(self) -> t.List[str]:
        return [head[0] for head in self.heads]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, unused_address = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                return
        with conn, conn.makefile("rb") as reader:
            answered = 0
            while True:
                head = []
                for line in iter(reader.readline, b""):
                    if line == b"\r\n":
                        break
                    head.append(line.decode("latin-1").rstrip("\r\n"))
                if not head:
                    return
                if answered == self.answers_per_connection:
                    return
                answered += 1
                self.heads.append(head)
                answer, close = self.script(head[0])
                conn.sendall(answer)
                if close:
                    return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def serve() -> t.Iterator[t.Callable[..., RawServer]]:
    servers: t.List[RawServer] = []

    def start(script: Script, answers_per_connection: t.Optional[int] = None,
              tls: t.Optional[ssl.SSLContext] = None) -> RawServer:
        servers.append(RawServer(script, answers_per_connection, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(status: str, headers: t.Sequence[str], body: bytes = b"") -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode("latin-1") + body


def manifest_answer(extra: t.Sequence[str] = ()) -> bytes:
    return answer("200 OK", [f"Content-Type: {OCI_MANIFEST}", f"Content-Length: {len(MANIFEST)}", *extra], MANIFEST)


def client_for(server: RawServer) -> RegistryClient:
    return RegistryClient(server.url, retries=1, backoff=0.01)


def test_a_chunked_manifest_with_extensions_and_trailers_is_read_whole(serve: t.Callable[[Script], RawServer]) -> None:
    half = len(MANIFEST) // 2
    body = (f"{half:x};name=value\r\n".encode() + MANIFEST[:half] + b"\r\n"
            + f"{len(MANIFEST) - half:X}\r\n".encode() + MANIFEST[half:] + b"\r\n0\r\nX-Trailer: yes\r\n\r\n")
    server = serve(lambda line: (answer("200 OK", [f"Content-Type: {OCI_MANIFEST}", "Transfer-Encoding: chunked"],
                                        body), False))
    client = client_for(server)
    assert client.get_manifest("app", digest_of(MANIFEST)).body == MANIFEST
    assert client.get_manifest("app", "v1").digest == digest_of(MANIFEST)
    assert server.connections == 1  # the chunked body was read to its end, so the connection was kept


def test_interim_answers_and_folded_headers_are_understood(serve: t.Callable[[Script], RawServer]) -> None:
    digest = digest_of(MANIFEST)
    server = serve(lambda line: (b"HTTP/1.1 100 Continue\r\n\r\n" + answer(
        "200 OK", [f"Content-Type: {OCI_MANIFEST}", "Docker-Content-Digest:", f" {digest}",
                   f"Content-Length: {len(MANIFEST)}"], MANIFEST), False))
    assert client_for(server).get_manifest("app", "v1").digest == digest


def test_an_idle_connection_the_server_closed_is_replaced_without_a_retry(
        serve: t.Callable[[Script], RawServer]) -> None:
    # The server drops every connection after one answer without saying so (an idle timeout of zero).
    server = serve(lambda line: (manifest_answer(), True))
    client = client_for(server)
    for unused in range(3):
        client.get_manifest("app", "v1")
    assert client.request_count == 3
    assert server.connections == 3


def test_a_kept_connection_closed_as_it_is_reused_is_replaced_at_once(serve: t.Callable[..., RawServer]) -> None:
    # The server keeps each connection open after one answer, then closes it when the next request comes:
    # the client only learns it is gone after sending. Nothing was answered, so it asks again on a new one.
    server = serve(lambda line: (manifest_answer(), False), answers_per_connection=1)
    client = client_for(server)
    for unused in range(3):
        client.get_manifest("app", "v1")
    assert client.request_count == 3  # no retry with a pause: the transport replaced the connection
    assert server.connections == 3
    assert len(server.heads) == 3


def test_an_http_1_0_answer_does_not_keep_the_connection(serve: t.Callable[[Script], RawServer]) -> None:
    server = serve(lambda line: (manifest_answer().replace(b"HTTP/1.1", b"HTTP/1.0", 1), False))
    client = client_for(server)
    client.get_manifest("app", "v1")
    client.get_manifest("app", "v1")
    assert server.connections == 2


@pytest.mark.parametrize("raw, reason", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "the server answered something that is not HTTP/1.1"),
    (answer("200 OK", [f"X-Filler-{n}: x" for n in range(150)]), "the answer has more than 100 header lines"),
    (answer("200 OK", ["X-Long: " + "x" * 70000]), "a header line is longer than 64 KiB"),
    (answer("200 OK", ["Content-Length: 10", "Content-Length: 12"]), "the answer's Content-Length is not one number"),
    # Digits int() would take, but not ASCII ones: a superscript two (Latin-1 \xb2).
    (answer("200 OK", ["Content-Length: 1\u00b2"]), "the answer's Content-Length is not one number"),
    (answer("200 OK", ["Content-Length: +12"]), "the answer's Content-Length is not one number"),
    # Transfer codings other than chunked hand over bytes that are not the content: refused, never read.
    (answer("200 OK", ["Transfer-Encoding: gzip, chunked"], f"{len(MANIFEST):x}\r\n".encode() + MANIFEST + b"\r\n0\r\n\r\n"),
     "the answer has a Transfer-Encoding other than chunked"),
    (answer("200 OK", ["Transfer-Encoding: identity", f"Content-Length: {len(MANIFEST)}"], MANIFEST),
     "the answer has a Transfer-Encoding other than chunked"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "the connection closed in the middle of the headers"),
    (b"", "the server closed the connection without answering"),
])
def test_garbage_from_the_server_is_one_sentence_and_not_the_objects_fault(
        serve: t.Callable[[Script], RawServer], raw: bytes, reason: str) -> None:
    server = serve(lambda line: (raw, True))
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.message == f"Could not reach manifest app:v1 at {server.url[len('http://'):]}: {reason}."
    assert caught.value.says_nothing_about_the_object


def test_a_compressed_manifest_is_not_called_broken(serve: t.Callable[[Script], RawServer]) -> None:
    server = serve(lambda line: (manifest_answer(["Content-Encoding: gzip"]), False))
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.message == "manifest app:v1 came in the gzip content encoding, which was not asked for."
    assert caught.value.says_nothing_about_the_object
    assert "Accept-Encoding: identity" in server.heads[0]  # it was asked for without compression


def test_a_redirect_to_a_target_with_spaces_is_not_sent(serve: t.Callable[[Script], RawServer]) -> None:
    server = serve(lambda line: (answer("307 Temporary Redirect", ["Location: /blobs/a b\r\nX: y", "Content-Length: 0"]),
                                 False))
    with pytest.raises(RegistryError) as caught:
        client_for(server).check_blob("app", "sha256:" + "a" * 64, mode="read")
    assert "was not sent" in caught.value.message
    assert server.request_lines == [f"GET /v2/app/blobs/sha256:{'a' * 64} HTTP/1.1"]


@pytest.mark.parametrize("token, reason", [
    ("evil\r\nX-Injected: 1", "the Authorization header contains a line break"),
    ("evil\u2603token", "a header is not Latin-1 text"),
])
def test_a_token_that_cannot_be_a_header_is_never_sent(
        serve: t.Callable[[Script], RawServer], token: str, reason: str) -> None:

    def script(line: str) -> t.Tuple[bytes, bool]:
        if line.startswith("GET /token"):
            body = json.dumps({"token": token}).encode()
            return answer("200 OK", [f"Content-Length: {len(body)}"], body), False
        realm = f'Bearer realm="{server.url}/token",service="registry"'
        return answer("401 Unauthorized", [f"WWW-Authenticate: {realm}", "Content-Length: 0"]), False

    server = serve(script)
    with pytest.raises(RegistryError) as caught:
        RegistryClient(server.url, username="u", password="p", retries=1, backoff=0.01).get_manifest("app", "v1")
    assert caught.value.message == f"Request for manifest app:v1 was not sent: {reason}."
    assert "evil" not in caught.value.message and "\u2603" not in caught.value.message
    assert [line.split(" ")[0] for line in server.request_lines] == ["GET", "GET"]  # the anonymous try, the token


def test_a_garbled_chunked_body_is_not_the_objects_fault(serve: t.Callable[[Script], RawServer]) -> None:
    server = serve(lambda line: (answer("200 OK", ["Transfer-Encoding: chunked"], b"zz\r\n"), True))
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.message == (
        "manifest app:v1 could not be read completely (a chunk size of the answer is not a hexadecimal number).")
    assert caught.value.says_nothing_about_the_object


@pytest.mark.parametrize("size", [
    lambda hexdigits: "0x" + hexdigits,  # a prefix
    lambda hexdigits: "+" + hexdigits,  # a sign
    lambda hexdigits: hexdigits[0] + "_" + hexdigits[1:],  # an underscore
], ids=["prefix", "sign", "underscore"])
def test_a_chunk_size_is_hex_digits_only(serve: t.Callable[[Script], RawServer],
                                         size: t.Callable[[str], str]) -> None:
    # int(text, 16) takes all three; a proxy on the way may frame the answer otherwise.
    text = size(f"{len(MANIFEST):x}")
    body = text.encode() + b"\r\n" + MANIFEST + b"\r\n0\r\n\r\n"
    server = serve(lambda line: (answer("200 OK", ["Transfer-Encoding: chunked"], body), True))
    with pytest.raises(RegistryError) as caught:
        client_for(server).get_manifest("app", "v1")
    assert caught.value.message == (
        "manifest app:v1 could not be read completely (a chunk size of the answer is not a hexadecimal number).")
    assert caught.value.says_nothing_about_the_object


def test_an_answer_with_both_transfer_encoding_and_content_length_is_read_chunked_and_never_reused(
        serve: t.Callable[[Script], RawServer]) -> None:
    chunked = f"{len(MANIFEST):x}\r\n".encode() + MANIFEST + b"\r\n0\r\n\r\n"
    server = serve(lambda line: (answer("200 OK", ["Transfer-Encoding: chunked", "Content-Length: 5"], chunked), False))
    client = client_for(server)
    for unused in range(2):
        assert client.get_manifest("app", "v1").body == MANIFEST
    assert server.connections == 2


# -- keep-alive: bytes no request asked for never become the next request's answer -------------------------

OTHER = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"x": 1}, "layers": []}).encode()
# A whole answer riding behind another one: whoever reads it next takes it for theirs.
SMUGGLED = answer("200 OK", [f"Content-Type: {OCI_MANIFEST}", f"Content-Length: {len(OTHER)}"], OTHER)


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTLS:
    return make_server_tls(pathlib.Path(tmp_path_factory.mktemp("tls")))


def _tls_context(server_tls: ServerTLS) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_tls.server.cert_path, server_tls.server.key_path)
    return context


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_body_longer_than_its_content_length_never_reaches_the_next_request(
        serve: t.Callable[..., RawServer], server_tls: ServerTLS, scheme: str) -> None:
    server = serve(lambda line: (manifest_answer() + SMUGGLED, False),
                   tls=_tls_context(server_tls) if scheme == "https" else None)
    client = RegistryClient(server.url, retries=1, backoff=0.01, verify=str(server_tls.ca.cert_path))
    for unused in range(3):
        assert client.get_manifest("app", "v1").body == MANIFEST
    assert server.connections == 3  # each connection that held more than its answer was dropped


def test_a_body_after_a_head_answer_never_reaches_the_next_request(serve: t.Callable[[Script], RawServer]) -> None:
    def script(line: str) -> t.Tuple[bytes, bool]:
        if line.startswith("HEAD "):
            return answer("200 OK", ["Content-Length: 3"]) + SMUGGLED, False
        return manifest_answer(), False

    server = serve(script)
    client = client_for(server)
    assert client.check_blob("app", "sha256:" + "a" * 64, "head").size == 3
    assert client.get_manifest("app", "v1").body == MANIFEST
    assert server.connections == 2 and client.request_count == 2


def test_a_body_after_a_204_never_reaches_the_next_request(serve: t.Callable[[Script], RawServer]) -> None:
    server = serve(lambda line: (answer("204 No Content", []) + SMUGGLED if "/first" in line
                                 else answer("404 Not Found", ["Content-Length: 0"]), False))
    origin = ("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    transport = Transport(origin, 5.0, ssl.create_default_context)
    try:
        first = transport.request(origin, "GET", "/first", {})
        assert first.status == 204 and first.read_all(1024) == b""
        first.release()
        second = transport.request(origin, "GET", "/second", {})
        assert second.status == 404
        second.release()
    finally:
        transport.close()
    assert server.connections == 2


def test_a_superscript_length_on_a_head_answer_is_no_size_not_a_traceback(
        serve: t.Callable[[Script], RawServer]) -> None:
    server = serve(lambda line: (answer("200 OK", ["Content-Length: \u00b2"]), False))
    check = client_for(server).check_blob("app", "sha256:" + "a" * 64, "head")
    assert (check.status, check.size) == (200, None)

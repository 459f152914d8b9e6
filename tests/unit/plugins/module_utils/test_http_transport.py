# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client's HTTP/1.1 against a loopback socket that answers raw bytes: framing, keep-alive, garbage."""

from __future__ import annotations

import json
import socket
import threading
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import RegistryClient, RegistryError
from tests.unit.plugins.module_utils.registry_fakes import OCI_MANIFEST, digest_of

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()

# Given the request line, the raw answer to send, and whether to close the connection after it.
Script = t.Callable[[str], t.Tuple[bytes, bool]]


class RawServer:
    """Accepts connections on 127.0.0.1 and answers each request with the bytes ``script`` returns."""

    def __init__(self, script: Script, answers_per_connection: t.Optional[int] = None):
        self.script = script
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
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, unused_address = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
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

    def start(script: Script, answers_per_connection: t.Optional[int] = None) -> RawServer:
        servers.append(RawServer(script, answers_per_connection))
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
    assert caught.value.message == "manifest app:v1 could not be read completely (a chunk size of the answer is not a number)."
    assert caught.value.says_nothing_about_the_object

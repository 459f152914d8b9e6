# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loopback HTTP servers for the registry client's unit tests.

They exist for behaviours the real registry cannot be made to show on demand (429 with Retry-After,
redirects to object storage, garbage bodies, pagination loops). Everything goes over a real socket.
Integration tests use the real registry (tests/harness).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import sys
import threading
import time
import typing as t

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class Seen(t.NamedTuple):
    method: str
    path: str
    headers: t.Dict[str, str]


class Reply(t.NamedTuple):
    status: int
    body: bytes = b""
    headers: t.Dict[str, str] = {}
    # Close the connection after the headers and ``cut_after`` bytes of the body, whatever Content-Length says.
    cut_body: bool = False
    cut_after: int = 0
    # Send the status line, headers and body one byte at a time, this many seconds apart (a server that drips).
    drip: float = 0.0
    drip_body_only: bool = False  # the status line and headers at once, then the body drips


Handler = t.Callable[[Seen], Reply]


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        # A client that hangs up mid-answer (the size-limit tests do) is expected, not a server fault.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1; ``routes`` maps "METHOD /path?query" or "/path" to handlers."""

    def __init__(self) -> None:
        self.routes: t.Dict[str, Handler] = {}
        self.seen: t.List[Seen] = []
        self.connections = 0  # TCP connections accepted: tells whether the client keeps them alive
        self._lock = threading.Lock()
        outer = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                with outer._lock:
                    outer.connections += 1
                super().setup()

            def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002 - keep test output quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Seen(self.command, self.path, dict(self.headers.items()))
                with outer._lock:
                    outer.seen.append(seen)
                handler = outer.routes.get(f"{self.command} {self.path}") or outer.routes.get(self.path)
                if handler is None:
                    handler = outer.routes.get(self.path.split("?")[0]) or outer.default
                reply = handler(seen)
                if reply.drip:
                    self._drip(reply)
                    return
                self.send_response(reply.status)
                headers = dict(reply.headers)
                headers.setdefault("Content-Length", str(len(reply.body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                if reply.cut_body:
                    self.send_header("Connection", "close")
                self.end_headers()
                if reply.cut_body:
                    self.wfile.write(reply.body[:reply.cut_after])
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            def _drip(self, reply: Reply) -> None:
                head = [f"HTTP/1.1 {reply.status} Dripping", "Connection: close"]
                headers = dict(reply.headers)
                headers.setdefault("Content-Length", str(len(reply.body)))
                head += [f"{key}: {value}" for key, value in headers.items()]
                preamble = ("\r\n".join(head) + "\r\n\r\n").encode()
                data = preamble + (b"" if self.command == "HEAD" else reply.body)
                self.close_connection = True
                start = len(preamble) if reply.drip_body_only else 0
                if start:
                    self.wfile.write(data[:start])
                for offset in range(start, len(data)):
                    try:
                        self.wfile.write(data[offset:offset + 1])
                    except OSError:
                        return  # the client gave up: that is what the tests want to see
                    time.sleep(reply.drip)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

        self._server = _ThreadingServer(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @staticmethod
    def default(seen: Seen) -> Reply:
        return json_reply(404, {"errors": [{"code": "NOT_FOUND", "message": "no route"}]})

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_to(self, fragment: str, method: t.Optional[str] = None) -> t.List[Seen]:
        with self._lock:
            return [s for s in self.seen if fragment in s.path and (method is None or s.method == method)]

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def json_reply(status: int, document: t.Any, headers: t.Optional[t.Dict[str, str]] = None) -> Reply:
    merged = {"Content-Type": "application/json"}
    merged.update(headers or {})
    return Reply(status, json.dumps(document).encode(), merged)


def manifest_reply(body: bytes, media_type: str, digest: t.Optional[str] = None) -> Reply:
    return Reply(200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest or digest_of(body)})


class FakeRegistry(LoopbackServer):
    """Just enough of the v2 API to serve manifests and blobs from dicts, counting every request."""

    def __init__(self) -> None:
        super().__init__()
        self.manifests: t.Dict[t.Tuple[str, str], t.Tuple[bytes, str]] = {}
        self.blobs: t.Dict[t.Tuple[str, str], bytes] = {}
        self.routes["/v2/"] = lambda seen: json_reply(200, {}, {"Docker-Distribution-API-Version": "registry/2.0"})

    def default(self, seen: Seen) -> Reply:  # type: ignore[override]
        path = seen.path.split("?")[0]
        if "/manifests/" in path:
            repository, reference = path[len("/v2/"):].split("/manifests/")
            stored = self.manifests.get((repository, reference))
            if stored is None:
                return json_reply(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
            return manifest_reply(*stored)
        if "/blobs/" in path:
            repository, digest = path[len("/v2/"):].split("/blobs/")
            data = self.blobs.get((repository, digest))
            if data is None:
                return json_reply(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})
            if seen.headers.get("Range") == "bytes=0-0":
                return Reply(206, data[:1], {"Content-Range": f"bytes 0-0/{len(data)}"})
            return Reply(200, data, {"Content-Type": "application/octet-stream"})
        return LoopbackServer.default(seen)

    def add_blob(self, repository: str, data: bytes) -> t.Dict[str, t.Any]:
        digest = digest_of(data)
        self.blobs[(repository, digest)] = data
        return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": len(data)}

    def add_manifest(self, repository: str, document: t.Dict[str, t.Any], tag: t.Optional[str] = None,
                     media_type: t.Optional[str] = None) -> t.Dict[str, t.Any]:
        body = json.dumps(document).encode()
        media_type = media_type or document.get("mediaType") or OCI_MANIFEST
        digest = digest_of(body)
        self.manifests[(repository, digest)] = (body, media_type)
        if tag:
            self.manifests[(repository, tag)] = (body, media_type)
        return {"mediaType": media_type, "digest": digest, "size": len(body)}

    def add_image(self, repository: str, layers: t.Sequence[bytes], tag: t.Optional[str] = None,
                  seed: str = "") -> t.Dict[str, t.Any]:
        config = self.add_blob(repository, json.dumps({"seed": seed, "layers": len(layers)}).encode())
        config["mediaType"] = "application/vnd.oci.image.config.v1+json"
        descriptors = [self.add_blob(repository, layer) for layer in layers]
        return self.add_manifest(
            repository,
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": descriptors},
            tag,
        )

    def add_index(self, repository: str, children: t.Sequence[t.Tuple[t.Dict[str, t.Any], t.Dict[str, t.Any]]],
                  tag: t.Optional[str] = None) -> t.Dict[str, t.Any]:
        """children: (descriptor, extra fields such as platform and annotations)."""
        entries = [dict(descriptor, **extra) for descriptor, extra in children]
        return self.add_manifest(repository, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, tag)

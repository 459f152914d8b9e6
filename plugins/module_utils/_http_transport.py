# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP/1.1 the registry client speaks: body-less requests on kept-alive connections.

A catalog walk is thousands of small requests, and the client's CPU per request decides how close it
gets to the registry's own floor: urllib3 over ``http.client`` spent 0.36 ms a request, a quarter of it
in the standard library's e-mail based header parser (benchmarks/README.md has the figures). This is
the part of HTTP/1.1 the client needs and nothing more: GET and HEAD without a body, answers framed by
Content-Length, chunked or the end of the connection, keep-alive, TLS. Standard library only: the
integrity probe runs it on the registry VM.

Every failure is an ``OSError`` subclass below, or the socket's own (a timeout, a reset); the client
turns them into one sentence naming the object.
"""

from __future__ import annotations

import io
import re
import select
import socket
import ssl
import threading
import typing as t

_MAX_LINE = 65536  # bytes in a status or header line
_MAX_HEADERS = 100  # header lines in one answer
_MAX_INTERIM = 10  # 1xx answers before the real one
_NO_BODY_STATUSES = frozenset((204, 304))
# A request line or header that carries one of these could smuggle a second request.
_UNSAFE_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_IN_HEADER = re.compile(r"[\r\n\x00]")
# RFC 9112 framing, read strictly: a chunk size is hex digits only (no sign, prefix or underscore, which
# int() would take), a Content-Length ASCII digits only (str.isdigit() takes superscripts and other scripts).
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_LENGTH = re.compile(r"[0-9]{1,19}")

Origin = t.Tuple[str, str, int]  # scheme, host, port


class TransportError(OSError):
    """A failure with a short reason a message can end with (``connection refused``, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConnectFailed(TransportError):
    """No connection was made (refused, unreachable, no such host, timed out connecting)."""


class TLSFailed(TransportError):
    """The TLS handshake failed or the trust store could not be loaded: retrying will not help."""


class CutShort(TransportError):
    """The connection ended before the answer was complete."""


class NotHTTP(TransportError):
    """The server answered something that is not HTTP/1.x."""


class Headers(dict):  # type: ignore[type-arg]
    """Answer headers by lower-cased name; repeated headers joined with ``, ``."""

    def get(self, name: str, default: t.Any = None) -> t.Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class _SocketReader(io.RawIOBase):
    """The socket as the raw stream under the connection's buffer. While ``probing``, it answers "nothing
    yet" without touching the socket, so the buffer can be asked what it holds without waiting."""

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock
        self.probing = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> t.Optional[int]:
        if self.probing:
            return None
        return self._sock.recv_into(buffer)


class _Connection:
    __slots__ = ("sock", "raw", "reader")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.raw = _SocketReader(sock)
        self.reader = io.BufferedReader(self.raw, 65536)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def leftover(self) -> bool:
        """True when bytes no request asked for are already read from the socket: in the buffer, or
        decrypted and waiting in the TLS layer. A connection holding any would hand them to the next
        request as its answer."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        self.raw.probing = True
        try:
            return bool(self.reader.peek(1))
        finally:
            self.raw.probing = False

    def dropped(self) -> bool:
        """True when an idle connection was closed by the server, or has bytes no request asked for."""
        if self.leftover():
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass


class Response:
    """One answer: status and headers read, the body read on demand from the connection."""

    __slots__ = ("status", "headers", "_connection", "_transport", "_origin", "_remaining", "_chunked",
                 "_will_close", "_done", "_released")

    def __init__(self, status: int, headers: Headers, connection: _Connection, transport: "Transport",
                 origin: Origin, remaining: t.Optional[int], chunked: bool, will_close: bool):
        self.status = status
        self.headers = headers
        self._connection = connection
        self._transport = transport
        self._origin = origin
        self._remaining = remaining  # bytes of body left (of the current chunk when chunked); None: until close
        self._chunked = chunked
        self._will_close = will_close
        self._done = remaining == 0 and not chunked
        self._released = False

    def read(self, amount: int = 65536) -> bytes:
        """Up to ``amount`` bytes of the body; ``b""`` at its end. Raises CutShort when it ends early."""
        if self._done:
            return b""
        reader = self._connection.reader
        if self._chunked and not self._remaining:
            self._remaining = self._next_chunk_size()
            if self._remaining == 0:
                self._done = True
                return b""
        if self._remaining is None:
            data = reader.read1(amount)
            if not data:
                self._done = True
            return data
        wanted = min(amount, self._remaining)
        data = reader.read(wanted)
        if len(data) < wanted:
            raise CutShort("the answer was cut short")
        self._remaining -= wanted
        if not self._remaining:
            if self._chunked:
                if reader.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
                    raise NotHTTP("a chunk of the answer is not terminated")
            else:
                self._done = True
        return data

    def read_all(self, limit: int) -> t.Optional[bytes]:
        """The whole body, or None (and the connection dropped) when it is larger than ``limit``."""
        chunks = []
        size = 0
        while True:
            chunk = self.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                self.release()
                return None
            chunks.append(chunk)

    def _next_chunk_size(self) -> int:
        reader = self._connection.reader
        line = reader.readline(_MAX_LINE)
        if not line:
            raise CutShort("the answer was cut short")
        digits = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not _CHUNK_SIZE.fullmatch(digits):
            raise NotHTTP("a chunk size of the answer is not a hexadecimal number")
        size = int(digits, 16)
        if size == 0:
            _read_header_block(reader)  # trailers, ignored
        return size

    def release(self) -> None:
        """Hand the connection back when the body was read to its end, otherwise close it."""
        if self._released:
            return
        self._released = True
        if self._done and not self._will_close and not self._connection.leftover():
            self._transport.keep(self._origin, self._connection)
        else:
            self._connection.close()


def _read_header_block(reader: t.Any) -> Headers:
    headers = Headers()
    last = ""
    for unused_line in range(_MAX_HEADERS + 1):
        line = reader.readline(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return headers
        if len(line) > _MAX_LINE:
            raise NotHTTP("a header line is longer than 64 KiB")
        if not line.endswith(b"\n"):
            raise CutShort("the connection closed in the middle of the headers")
        if line[0] in b" \t" and last:  # an obsolete folded continuation of the previous header
            dict.__setitem__(headers, last, f"{dict.__getitem__(headers, last)} {line.strip().decode('latin-1')}")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise NotHTTP("a header line has no name")
        last = name.strip().lower().decode("latin-1")
        text = value.strip().decode("latin-1")
        earlier = dict.get(headers, last)
        dict.__setitem__(headers, last, text if earlier is None else f"{earlier}, {text}")
    raise NotHTTP(f"the answer has more than {_MAX_HEADERS} header lines")


def _read_status(reader: t.Any) -> t.Tuple[int, bool]:
    """The status code and whether the server speaks HTTP/1.0; 1xx answers are skipped."""
    for unused_answer in range(_MAX_INTERIM + 1):
        line = reader.readline(_MAX_LINE + 1)
        if not line:
            raise CutShort("the server closed the connection without answering")
        if not line.endswith(b"\n"):
            raise NotHTTP("the server answered something that is not HTTP/1.1")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise NotHTTP("the server answered something that is not HTTP/1.1")
        status = int(parts[1])
        if status >= 200 or status < 100:
            return status, parts[0] == b"HTTP/1.0"
        _read_header_block(reader)
    raise NotHTTP("the server sent too many interim (1xx) answers")


def _body_framing(method: str, status: int, headers: Headers, http10: bool) -> t.Tuple[t.Optional[int], bool, bool]:
    """(bytes of body or None for until-close, chunked, connection closes after)."""
    connection = dict.get(headers, "connection", "").lower()
    will_close = "close" in connection or (http10 and "keep-alive" not in connection)
    if method == "HEAD" or status in _NO_BODY_STATUSES:
        return 0, False, will_close
    values = {value.strip() for value in dict.get(headers, "content-length", "").split(",")} - {""}
    if len(values) > 1 or (values and not _LENGTH.fullmatch(next(iter(values)))):
        raise NotHTTP("the answer's Content-Length is not one number")
    if "transfer-encoding" in headers:
        # Only chunked is read: any other coding would hand the client bytes that are not the content.
        if dict.get(headers, "transfer-encoding", "").strip().lower() != "chunked":
            raise NotHTTP("the answer has a Transfer-Encoding other than chunked")
        # With a Content-Length too, the two disagree on where the answer ends: chunked decides (RFC 9112),
        # and the connection is never reused, whatever a proxy on the way may have made of it.
        return None, True, will_close or bool(values)
    if not values:
        return None, False, True
    return int(next(iter(values))), False, will_close


class Transport:
    """Kept-alive connections per origin: at most ``pool_size`` idle ones each, for ``max_origins``
    origins at once; the first origin (the registry) is never dropped for another."""

    def __init__(self, home: Origin, timeout: float, tls: t.Callable[[], ssl.SSLContext], pool_size: int = 8,
                 max_origins: int = 3, on_connect: t.Optional[t.Callable[[socket.socket], None]] = None):
        self._home = home
        self._timeout = timeout
        self._tls = tls
        self._tls_context: t.Optional[ssl.SSLContext] = None
        self._pool_size = max(1, pool_size)
        self._max_origins = max(1, max_origins)
        self._on_connect = on_connect
        self._idle: t.Dict[Origin, t.List[_Connection]] = {home: []}
        self._lock = threading.Lock()

    def request(self, origin: Origin, method: str, target: str, headers: t.Mapping[str, str]) -> Response:
        """Send one body-less request and read the answer's status and headers."""
        if _UNSAFE_IN_TARGET.search(target):
            raise ValueError("the request target contains spaces or control characters")
        host = origin[1] if ":" not in origin[1] else f"[{origin[1]}]"
        default_port = 443 if origin[0] == "https" else 80
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}" if origin[2] == default_port else f"Host: {host}:{origin[2]}"]
        for name, value in headers.items():
            if _UNSAFE_IN_HEADER.search(value):
                raise ValueError(f"the {name} header contains a line break")
            lines.append(f"{name}: {value}")
        try:
            data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("a header is not Latin-1 text") from None  # the error would quote the character
        connection, reused = self._take(origin)
        try:
            try:
                connection.send(data)
                status, http10 = _read_status(connection.reader)
            except (CutShort, ConnectionError):
                if not reused:
                    raise
                # The server closed an idle connection just as it was reused: once more on a new one.
                # Safe: nothing was answered, and only GET and HEAD are sent.
                connection.close()
                connection = self._connect(origin)
                connection.send(data)
                status, http10 = _read_status(connection.reader)
            headers_in = _read_header_block(connection.reader)
            remaining, chunked, will_close = _body_framing(method, status, headers_in, http10)
        except BaseException:
            connection.close()
            raise
        return Response(status, headers_in, connection, self, origin, remaining, chunked, will_close)

    def keep(self, origin: Origin, connection: _Connection) -> None:
        with self._lock:
            idle = self._idle.get(origin)
            if idle is None:
                if len(self._idle) >= self._max_origins:
                    self._drop_one_origin()
                idle = self._idle[origin] = []
            if len(idle) < self._pool_size:
                idle.append(connection)
                return
        connection.close()

    def _drop_one_origin(self) -> None:
        for origin in self._idle:
            if origin != self._home:
                for connection in self._idle.pop(origin):
                    connection.close()
                return

    def _take(self, origin: Origin) -> t.Tuple[_Connection, bool]:
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                connection = idle.pop() if idle else None
            if connection is None:
                return self._connect(origin), False
            if not connection.dropped():
                return connection, True
            connection.close()

    def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        context = self._context() if scheme == "https" else None  # a trust store that cannot load fails first
        try:
            sock = socket.create_connection((host, port), timeout=self._timeout)
        except socket.gaierror as exc:
            raise ConnectFailed("host name not found" if exc.errno in (socket.EAI_NONAME, socket.EAI_AGAIN)
                                else f"host name lookup failed ({exc.strerror})") from None
        except OSError as exc:
            raise ConnectFailed(_os_reason(exc)) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            sock.close()
            raise TLSFailed(_tls_reason(exc)) from None
        except OSError as exc:
            sock.close()
            raise ConnectFailed(_os_reason(exc)) from None
        if self._on_connect is not None:
            self._on_connect(sock)
        return _Connection(sock)

    def _context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            try:
                self._tls_context = self._tls()
            except (OSError, ssl.SSLError) as exc:
                raise TLSFailed(f"the trust store could not be loaded ({getattr(exc, 'strerror', None) or exc})") from None
        return self._tls_context

    def close(self) -> None:
        with self._lock:
            idle = [connection for connections in self._idle.values() for connection in connections]
            self._idle = {self._home: []}
        for connection in idle:
            connection.close()


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror.lower() if exc.strerror else type(exc).__name__


def _tls_reason(exc: ssl.SSLError) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", "") or ""
        return f"TLS certificate verification failed ({detail})" if detail else "TLS certificate verification failed"
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return "TLS handshake failed (is it plain HTTP?)"
    return "TLS handshake failed"

"""HTTP plumbing on the standard library: body framing, requests and responses, the per-connection handler
and the threaded server with bounded connections."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .auth import Principal
from .common import (
    _HOST_RE,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    IO_CHUNK,
    MAX_DRAIN,
    MAX_JSON_BODY,
    HubHTTPError,
    _BadFraming,
    _ClientGone,
    _header_safe,
    logger,
)

if TYPE_CHECKING:
    from .app import HubApp


class _RequestBody:
    """Reads a request body framed by Content-Length or chunked transfer encoding, and drains what is left."""

    def __init__(self, rfile: IO[bytes], headers: Mapping[str, str]) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._chunk_left = 0
        self._remaining = 0
        self.declared_length: int | None = None
        if not self._chunked:
            raw = headers.get("Content-Length")
            if raw is not None:
                value = raw.strip()
                # ASCII digits only ("²".isdigit() is true) and few enough for int() and for any real body.
                if not (value.isascii() and value.isdigit()) or len(value) > 18:
                    raise _BadFraming(f"invalid Content-Length {raw[:40]!r}: expected a number of bytes")
                self._remaining = self.declared_length = int(value)
        self.eof = not self._chunked and self._remaining == 0
        self.bytes_read = 0

    def _raw_read(self, size: int) -> bytes:
        try:
            data = self._rfile.read(size)
        except (OSError, ValueError) as exc:  # timeouts, resets, closed file
            raise _ClientGone(str(exc)) from exc
        if not data:
            raise _ClientGone("connection closed in the middle of the request body")
        return data

    def _raw_readline(self) -> bytes:
        try:
            line = self._rfile.readline(4098)
        except (OSError, ValueError) as exc:
            raise _ClientGone(str(exc)) from exc
        if not line:
            raise _ClientGone("connection closed in the middle of a chunked body")
        if len(line) > 4096:
            raise _BadFraming("chunk header line too long")
        return line

    def read(self, size: int = IO_CHUNK) -> bytes:
        """Return up to `size` bytes of the body; `b""` once it is complete."""
        if self.eof:
            return b""
        if not self._chunked:
            data = self._raw_read(min(size, self._remaining))
            self._remaining -= len(data)
            self.eof = self._remaining == 0
        else:
            if self._chunk_left == 0:
                size_field = self._raw_readline().split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(size_field, 16)
                except ValueError:
                    raise _BadFraming(f"invalid chunk size {size_field[:20]!r}") from None
                if self._chunk_left < 0:
                    raise _BadFraming("negative chunk size")
                if self._chunk_left == 0:
                    while self._raw_readline() not in (b"\r\n", b"\n"):  # skip trailers
                        pass
                    self.eof = True
                    return b""
            data = self._raw_read(min(size, self._chunk_left))
            self._chunk_left -= len(data)
            if self._chunk_left == 0 and self._raw_readline() not in (b"\r\n", b"\n"):
                raise _BadFraming("missing CRLF after a chunk")
        self.bytes_read += len(data)
        return data

    def read_all(self, limit: int = MAX_JSON_BODY) -> bytes:
        if self.declared_length is not None and self.declared_length > limit:
            raise HubHTTPError(413, f"Request body of {self.declared_length} bytes is larger than {limit} bytes.")
        parts, total = [], 0
        while chunk := self.read():
            total += len(chunk)
            if total > limit:
                raise HubHTTPError(413, f"Request body is larger than {limit} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    def iter_lines(self, max_line: int) -> Iterator[bytes]:
        """Yield the body's lines (NDJSON), streaming: memory stays bounded by the longest line."""
        buffer = bytearray()
        while chunk := self.read():
            buffer += chunk
            start = 0
            while (newline := buffer.find(b"\n", start)) >= 0:
                yield bytes(buffer[start:newline])
                start = newline + 1
            del buffer[:start]
            if len(buffer) > max_line:
                raise HubHTTPError(413, f"A line of the request body is longer than {max_line} bytes.")
        if buffer:
            yield bytes(buffer)

    def drain(self, limit: int = MAX_DRAIN) -> bool:
        """Read and drop the rest of the body, up to `limit` bytes; False when more is left (close, do not wait)."""
        if self.declared_length is not None and self.declared_length - self.bytes_read > limit:
            return False
        drained = 0
        while chunk := self.read():
            drained += len(chunk)
            if drained > limit:
                return False
        return True


def _parse_json(raw: bytes, what: str) -> Any:
    """Parse JSON from a client; anything malformed (bad UTF-8, syntax, nesting too deep) is a 400."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HubHTTPError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise HubHTTPError(400, f"{what} is nested too deeply.") from None


@dataclass
class Request:
    method: str
    target: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: _RequestBody
    base_url: str
    principal: Principal | None = None
    auth_invalid: bool = False
    request_id: str = ""

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        return _parse_json(self.body.read_all(), "Request body")

    def json_object(self) -> dict:
        data = self.json()
        if not isinstance(data, dict):
            raise HubHTTPError(400, f"Request body must be a JSON object, got {type(data).__name__}.")
        return data


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: tuple[Path, int, int] | None = None  # (path, offset, length), streamed instead of `body`
    close: bool = False

    @property
    def content_length(self) -> int:
        return self.file[2] if self.file is not None else len(self.body)


def _json_response(
    obj: Any,
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    content_type: str = "application/json; charset=utf-8",
) -> Response:
    # default=str: model-card metadata may hold YAML dates, which JSON has no type for.
    return Response(status, [("Content-Type", content_type), *headers], json.dumps(obj, default=str).encode())


def _error_response(error: HubHTTPError) -> Response:
    headers = [("X-Error-Message", _header_safe(error.message))]
    if error.code:
        headers.append(("X-Error-Code", error.code))
    headers.extend(error.headers.items())
    return _json_response(error.body, error.status, headers)


def _split_target(target: str) -> tuple[list[str], dict[str, list[str]]]:
    """Split a request target into decoded path segments and query parameters, refusing path traversal.

    Each segment is percent-decoded on its own, so `%2F` inside a segment (how the client sends revisions such as
    `refs%2Fpr%2F1` and tree paths) stays inside that segment. `.`/`..` are refused in any spelling: plain,
    percent-encoded, double-encoded or hidden behind an encoded slash or backslash.
    """
    parts = urllib.parse.urlsplit(target)
    if not parts.path.startswith("/"):
        raise HubHTTPError(400, f"Invalid request target {target[:200]!r}: expected an absolute path.")
    raw_segments = parts.path.split("/")[1:]
    if raw_segments and raw_segments[-1] == "":
        raw_segments.pop()  # tolerate a trailing slash
    segments = []
    for raw in raw_segments:
        try:
            decoded = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise HubHTTPError(400, f"Invalid percent-encoding in URL segment {raw[:100]!r}.") from None
        if raw == "" or "\0" in decoded:
            raise HubHTTPError(400, f"Invalid URL path {parts.path[:200]!r}: empty segment or NUL byte.")
        for candidate in (decoded, urllib.parse.unquote(decoded)):
            if any(piece in (".", "..") for piece in re.split(r"[/\\]", candidate)):
                raise HubHTTPError(400, f"Path traversal refused in URL {parts.path[:200]!r}.")
        segments.append(decoded)
    return segments, urllib.parse.parse_qs(parts.query, keep_blank_values=True)


class _HubRequestHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: frames bodies (Content-Length or chunked), always drains them, always sends
    Content-Length, and streams file downloads with `sendfile`."""

    protocol_version = "HTTP/1.1"
    server_version = "hftransfer-hub"
    sys_version = ""
    disable_nagle_algorithm = True  # small JSON answers must not wait for delayed ACKs on keep-alive connections
    timeout = 300  # seconds a connection may stay silent (idle keep-alive or stalled upload)
    server: _HubHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is logged by `_handle`, with timing and user

    def _base_url(self) -> str:
        host = self.headers.get("Host", "")
        # URLs handed back to the client (upload links, commit URLs) use the address the client used.
        return f"http://{host}" if _HOST_RE.match(host) else self.server.public_url

    def _shown_path(self) -> str:
        if self.path.startswith("/_hftransfer/lfs-upload/"):
            return "/_hftransfer/lfs-upload/<signed link>"  # the link is a credential: keep it out of logs
        return self.path[:300]

    def handle_one_request(self) -> None:
        # Waiting for (or reading) the next request line and headers: this connection may be closed to make room.
        self.server.set_idle(self.connection, True)
        self.connection.settimeout(self.server.idle_timeout)
        super().handle_one_request()

    def _handle(self) -> None:
        self.server.set_idle(self.connection, False)
        self.connection.settimeout(self.timeout)
        started = time.monotonic()
        request_id = self.headers.get("X-Amzn-Trace-Id") or self.headers.get("X-Request-Id") or secrets.token_hex(8)
        request_id = _header_safe(request_id, 100)
        request: Request | None = None
        try:
            body = _RequestBody(self.rfile, self.headers)
        except _BadFraming as exc:
            response = _error_response(HubHTTPError(400, f"Bad request body framing: {exc}"))
            response.close = True
            self._send(response, request_id)
            return
        try:
            segments, query = _split_target(self.path)
            request = Request(self.command, self.path, segments, query, self.headers, body, self._base_url())
            request.request_id = request_id
            response = self.server.app.handle(request)
        except _ClientGone as exc:
            logger.warning(
                '%s "%s %s": client went away mid-request (%s)',
                self.client_address[0],
                self.command,
                self._shown_path(),
                exc,
            )
            self.close_connection = True
            return
        except _BadFraming as exc:
            response = _error_response(HubHTTPError(400, f"Bad request body framing: {exc}"))
            response.close = True
        except HubHTTPError as exc:
            response = _error_response(exc)
        except Exception:
            logger.exception("internal error on %s %s (request id %s)", self.command, self._shown_path(), request_id)
            response = _error_response(
                HubHTTPError(500, f"Internal server error (request id {request_id}); see the server log.")
            )
        if not response.close:
            try:
                # The next request on this connection starts right after this body; a large unread rest (an early
                # 413 or 401 on a big upload) is not waited for: the connection is closed instead.
                if not body.drain():
                    response.close = True
            except _ClientGone:
                self.close_connection = True
                return
            except _BadFraming as exc:
                response = _error_response(HubHTTPError(400, f"Bad request body framing: {exc}"))
                response.close = True
        self._send(response, request_id)
        user = request.principal.name if request is not None and request.principal else "-"
        logger.info(
            '%s "%s %s" %d %d %.3fs user=%s id=%s',
            self.client_address[0],
            self.command,
            self._shown_path(),
            response.status,
            response.content_length,
            time.monotonic() - started,
            user,
            request_id,
        )

    def _send(self, response: Response, request_id: str) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("X-Request-Id", request_id)
            self.send_header("Content-Length", str(response.content_length))
            if response.close:
                self.send_header("Connection", "close")  # also sets self.close_connection
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.file is not None:
                path, offset, length = response.file
                with open(path, "rb") as handle:
                    sent = self.connection.sendfile(handle, offset, length)
                if sent != length:
                    raise OSError(f"sent {sent} of {length} bytes of {path}")
            elif response.body:
                self.wfile.write(response.body)
        except OSError as exc:  # client gone, reset, timeout, or a blob vanished
            logger.info("could not send the response to %s: %s", self.client_address[0], exc)
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle


class _HubHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # rebind the same port right after a stop, despite TIME_WAIT connections
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: HubApp,
        family: socket.AddressFamily,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.address_family = family
        self.app = app
        self.public_url = ""
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._connections: dict[Any, threading.Thread] = {}  # open connection -> the thread serving it
        self._idle: dict[Any, float] = {}  # connections waiting for their next request -> since when
        self._connections_lock = threading.Lock()
        super().__init__(address, _HubRequestHandler)

    def set_idle(self, connection: Any, idle: bool) -> None:
        with self._connections_lock:
            if idle:
                self._idle[connection] = time.monotonic()
            else:
                self._idle.pop(connection, None)

    def _make_room(self) -> bool:
        """Under the lock: whether a new connection may be served, closing the longest-idle one if all are taken.

        Idle keep-alive connections and clients still sending their request headers (slowloris) give way to new
        clients; connections in the middle of a request are never cut.
        """
        if len(self._connections) < self.max_connections:
            return True
        if not self._idle:
            return False
        victim = min(self._idle, key=self._idle.__getitem__)
        del self._idle[victim]
        self._connections.pop(victim, None)  # its thread ends on the shut-down socket
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)
        return True

    def _refuse(self, request: Any) -> None:
        """Answer 503 on a connection that cannot be served (every worker is busy), without blocking the accept loop."""
        message = (
            f"Server busy: all {self.max_connections} connections are serving requests. Retry in a moment "
            "(or start the server with a larger --max-connections)."
        )
        body = json.dumps({"error": message}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nX-Error-Message: {message}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
        logger.warning("refused a connection: all %d connections busy", self.max_connections)
        super().shutdown_request(request)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), a DNS query this server must never make.
        socketserver_bind = super(http.server.HTTPServer, self).server_bind
        socketserver_bind()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # Daemon threads (a forgotten server never blocks interpreter exit), but tracked, so `stop()` can wait for
        # requests in flight: no write may land after the data directory is released.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="hub-server-conn", daemon=True
        )
        with self._connections_lock:
            admitted = self._make_room()
            if admitted:
                self._connections[request] = thread
        if not admitted:
            self._refuse(request)
            return
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
            self._idle.pop(request, None)
        super().shutdown_request(request)

    def close_all_connections(self, timeout: float = 30.0) -> None:
        """Cut open connections (idle keep-alive ones included) and wait for their threads to finish."""
        with self._connections_lock:
            connections = dict(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection error with %s", client_address, exc_info=True)

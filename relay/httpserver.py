"""The relay's one HTTP/1.1 responder, on h11: the admin listener and the sandbox OAuth provider.

h11 does the protocol (request line and header syntax, framing, keep-alive, chunked bodies); this
module adds the I/O, limits (head size, body size, idle time, connections) and a small request /
response model. A handler is ``async (HttpRequest) -> HttpResponse``; an exception in it is
logged and answered 500, never passed to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

log = logging.getLogger("relay.http")

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
IDLE_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 64
READ_BYTES = 64 * 1024
BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

REASONS = {200: "OK", 302: "Found", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Payload Too Large", 428: "Precondition Required", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP request we can read; ``status`` is the reply code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HttpRequest:
    """A parsed request: method, path, query and form parameters (first value each), headers."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its first value
    body: bytes
    form: dict[str, str] = field(default_factory=dict)
    client: str = ""


@dataclass(frozen=True)
class HttpResponse:
    """A response to write; ``body`` is sent with Content-Length."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def json_response(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """Return a JSON response."""
    return HttpResponse(status, json.dumps(payload, indent=1).encode(), "application/json", headers)


def text_response(status: int, text: str, content_type: str = "text/plain; charset=utf-8",
                  headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """Return a text response."""
    return HttpResponse(status, text.encode("utf-8"), content_type, headers)


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def build_request(event: h11.Request, body: bytes, client: str = "") -> HttpRequest:
    """Turn h11's request event and the body into an `HttpRequest` (pure)."""
    headers: dict[str, str] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    split = urllib.parse.urlsplit(event.target.decode("latin-1"))
    query = _first_values(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
    form: dict[str, str] = {}
    if headers.get("content-type", "").split(";")[0].strip() == "application/x-www-form-urlencoded":
        form = _first_values(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return HttpRequest(event.method.decode("latin-1").upper(), split.path or "/", query, headers, body,
                       form, client)


def response_headers(resp: HttpResponse, *, close: bool) -> list[tuple[str, str]]:
    """The header list of ``resp`` (length, type, no-store, nosniff, then its own)."""
    headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body))),
               ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
    if close:
        headers.append(("Connection", "close"))
    own = {name.lower() for name, _ in resp.headers}
    return [h for h in headers if h[0].lower() not in own] + list(resp.headers)


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits of an `HttpServer`."""

    max_head_bytes: int = MAX_HEAD_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS


class _Connection:
    """One client connection: read requests with h11, answer them, until close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                 limits: HttpLimits) -> None:
        self.reader, self.writer, self.handler, self.limits = reader, writer, handler, limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        peer = writer.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""

    async def run(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except BadRequest as exc:
                await self._send_error(exc.status, str(exc))
                return
            if request is None:
                return
            response = await self._respond(request)
            await self._send(response, head_only=request.method == "HEAD")
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self.handler(request)
        except Exception as exc:  # a handler bug must not reach the client or take the server down
            log.error("http %s %s: internal error: %s", request.method, request.path, exc, exc_info=exc)
            return json_response(500, {"error": "internal error (logged by the relay)"})

    async def _next_event(self) -> object:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                raise BadRequest(f"malformed request: {exc}", 431 if status == 431 else 400) from None
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(self.limits.idle_timeout_s):
                    data = await self.reader.read(READ_BYTES)
            except TimeoutError:
                raise BadRequest("no complete request in time", 408) from None
            except OSError:
                data = b""
            self.conn.receive_data(data)

    async def _read_request(self) -> HttpRequest | None:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise BadRequest("expected a request")
        # h11 limits only a head still incomplete after a read; a whole one in one read is checked here.
        head_bytes = len(event.method) + len(event.target) + sum(
            len(name) + len(value) + 4 for name, value in event.headers)
        if head_bytes > self.limits.max_head_bytes:
            raise BadRequest(f"request head over {self.limits.max_head_bytes} bytes", 431)
        length = dict(event.headers).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise BadRequest(f"request body over {self.limits.max_body_bytes} bytes", 413)
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.limits.max_body_bytes:
                    raise BadRequest(f"request body over {self.limits.max_body_bytes} bytes", 413)
            elif isinstance(part, h11.EndOfMessage):
                return build_request(event, bytes(body), self.client)
            else:
                raise BadRequest("connection closed in the middle of a request")

    async def _send(self, resp: HttpResponse, *, head_only: bool = False) -> None:
        close = self.conn.their_state is not h11.DONE
        status = resp.status
        try:
            out = self.conn.send(h11.Response(
                status_code=status, reason=REASONS.get(status, "Status").encode(),
                headers=response_headers(resp, close=close)))
            if resp.body and not head_only:
                out += self.conn.send(h11.Data(data=resp.body))
            out += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            log.error("http: cannot send a %d response: %s", status, exc)
            return
        self.writer.write(out)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self.limits.idle_timeout_s):
                await self.writer.drain()

    async def _send_error(self, status: int, message: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        await self._send(json_response(status, {"error": message}))


class HttpServer:
    """An HTTP/1.1 server on ``host:port`` serving ``handler`` (``.port`` is the bound port)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, *,
                 limits: HttpLimits | None = None, name: str = "http") -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.limits = limits or HttpLimits()
        self.name = name
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and start accepting."""
        self._server = await asyncio.start_server(self.serve_connection, self.host, self.port,
                                                  limit=self.limits.max_head_bytes + READ_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection until it closes (usable as an asyncio stream callback)."""
        task = asyncio.current_task()
        if len(self._tasks) >= self.limits.max_connections:
            writer.write(BUSY_RESPONSE)
            await _close(writer)
            return
        if task is not None:
            self._tasks.add(task)
        try:
            await _Connection(reader, writer, self.handler, self.limits).run()
        except asyncio.CancelledError:
            return
        finally:
            if task is not None:
                self._tasks.discard(task)
            await _close(writer)

    async def stop(self) -> None:
        """Stop accepting and close open connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
            self._server = None


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                           limits: HttpLimits | None = None) -> None:
    """Serve one connection with ``handler`` (for servers that accept connections themselves)."""
    try:
        await _Connection(reader, writer, handler, limits or HttpLimits()).run()
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        async with asyncio.timeout(2):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()

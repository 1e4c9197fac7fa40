"""A minimal HTTP/1.1 request reader and response writer for the sandbox OAuth provider.

One request per connection (``Connection: close``): enough for OAuth clients, and it keeps the
server free of keep-alive state.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024

REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 428: "Precondition Required",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP request we can read."""


@dataclass(frozen=True)
class HttpRequest:
    """A parsed request: method, path, query and form parameters (first value each), headers."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    form: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpResponse:
    """A response to write; ``body`` is sent with Content-Length."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """Return a JSON response."""
    return HttpResponse(status, json.dumps(payload).encode(), "application/json", headers)


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def parse_head(head: bytes) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """Parse the request line and headers; return (method, path, query, headers)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise BadRequest("undecodable head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("bad request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("bad header line")
        headers[name.strip().lower()] = value.strip()
    split = urllib.parse.urlsplit(target)
    query = _first_values(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
    return method.upper(), split.path, query, headers


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """Read one request; None when the peer closed before sending one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise BadRequest("truncated head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("head too large") from None
    if len(head) > MAX_HEAD_BYTES:
        raise BadRequest("head too large")
    method, path, query, headers = parse_head(head[:-4])
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest("bad Content-Length") from None
    if length < 0 or length > MAX_BODY_BYTES:
        raise BadRequest("bad Content-Length")
    body = await reader.readexactly(length) if length else b""
    form: dict[str, str] = {}
    if headers.get("content-type", "").split(";")[0].strip() == "application/x-www-form-urlencoded":
        form = _first_values(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return HttpRequest(method, path, query, headers, body, form)


def render_response(resp: HttpResponse) -> bytes:
    """Serialise a response (HTTP/1.1, Connection: close)."""
    lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}",
             f"Content-Type: {resp.content_type}",
             f"Content-Length: {len(resp.body)}",
             "Cache-Control: no-store",
             "Connection: close"]
    lines += [f"{name}: {value}" for name, value in resp.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body

"""The bench upstream's HTTP side: an OAuth token endpoint that counts requests, and control routes.

A minimal HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies only):

* ``POST /token``: grants ``client_credentials`` and ``refresh_token`` (form body, client_secret_post);
* ``GET /control/stats``, ``POST /control/reset``, ``POST /control/config`` (``{"latency_ms": 50}``),
  ``POST /control/mailbox`` (``{"count": n, "size": s}`` -> digests), ``GET /control/delivered``,
  ``POST /control/token`` (a token for direct clients, not counted as a token request).
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

from bench.upstream_state import CLIENT_ID, CLIENT_SECRET, Mailbox, UpstreamState

MAX_BODY_BYTES = 1024 * 1024
Response = tuple[int, dict[str, object] | list[object]]


class TokenHttpServer:
    """Token endpoint + control API over one loopback port."""

    def __init__(self, state: UpstreamState) -> None:
        self.state = state
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on 127.0.0.1, port 0."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (h.partition(":") for h in lines[1:] if h)}
                length = int(headers.get("content-length", "0"))
                if length > MAX_BODY_BYTES:
                    return
                body = await reader.readexactly(length) if length else b""
                status, payload = self.route(method, target.split("?", 1)[0], headers, body)
                data = json.dumps(payload).encode()
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Cache-Control: no-store\r\n\r\n" % (status, len(data)) + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            return
        finally:
            writer.transport.abort()

    def route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        """Dispatch one request; return (HTTP status, JSON payload)."""
        state = self.state
        if method == "POST" and path == "/token":
            return self.token(parse_qs(body.decode()))
        if path == "/control/stats":
            return 200, state.stats()
        if method == "POST" and path == "/control/reset":
            state.reset()
            return 200, state.stats()
        if method == "POST" and path == "/control/config":
            state.latency_s = float(json.loads(body or b"{}").get("latency_ms", 0)) / 1000
            return 200, state.stats()
        if method == "POST" and path == "/control/mailbox":
            spec = json.loads(body)
            state.mailbox = Mailbox.build(int(spec["count"]), int(spec["size"]))
            return 200, {"digests": state.mailbox.digests, "octets": state.mailbox.octets}
        if path == "/control/delivered":
            return 200, state.delivered
        if method == "POST" and path == "/control/token":
            return 200, {"access_token": state.issue_token(), "refresh_token": state.issue_refresh_token()}
        return 404, {"error": "not_found"}

    def token(self, form: dict[str, list[str]]) -> Response:
        """RFC 6749 token endpoint (section 4.4 client credentials, section 6 refresh)."""
        state = self.state
        state.counts["token_requests"] += 1
        field = {k: v[0] for k, v in form.items()}
        if field.get("client_id") != CLIENT_ID or field.get("client_secret", CLIENT_SECRET) != CLIENT_SECRET:
            return 401, {"error": "invalid_client", "error_description": "unknown bench client"}
        grant = field.get("grant_type")
        if grant == "refresh_token":
            if field.get("refresh_token") not in state.refresh_tokens:
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            payload: dict[str, object] = {"refresh_token": field["refresh_token"]}
        elif grant == "client_credentials":
            payload = {}
        else:
            return 400, {"error": "unsupported_grant_type"}
        payload.update({"access_token": state.issue_token(), "token_type": "Bearer", "expires_in": 3600})
        if "scope" in field:
            payload["scope"] = field["scope"]
        return 200, payload

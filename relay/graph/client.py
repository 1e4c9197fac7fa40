"""Microsoft Graph over HTTP for one account: bearer token per resource, one refresh, throttling.

`GraphService` is shared by every session of a relay: one httpx client per TLS setting, and per
mailbox a gate that honours Graph's throttling (a ``Retry-After`` longer than we wait inline makes
later requests for that mailbox fail at once until it has passed, instead of hammering Graph) and
a cap of 4 concurrent requests (Graph's MailboxConcurrency limit, PROTOCOLS.md 9.1).
`GraphClient` is one account's view of it: `request` adds ``Authorization: Bearer`` with the
account's graph.microsoft.com token, answers a 401 with one forced refresh and one retry, waits
out a short Retry-After once, and raises `GraphError` (with the operator's fix) otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.config.model import AccountConfig, GraphConfig
from relay.errors import UpstreamUnavailable
from relay.graph.answers import GraphAnswer, graph_error, parse_answer
from relay.secret import Secret
from relay.tokens.source import GRAPH, TokenSource

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("relay.graph")

MAX_CONCURRENT_PER_MAILBOX = 4
WAIT_INLINE_MAX_S = 5.0  # a Retry-After up to this is waited out within the request, once
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class MailboxGate:
    """Per mailbox: Graph's concurrency cap and the time until which Graph asked us to wait."""

    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_PER_MAILBOX))
    blocked_until: float = 0.0  # time.monotonic()


class GraphService:
    """What all Graph sessions of a relay share (HTTP clients, per-mailbox gates); close at stop."""

    def __init__(self, tokens: TokenSource, *, sleep: Sleep | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens = tokens
        self.sleep = sleep or asyncio.sleep
        self.clock = clock
        self._clients: dict[tuple[str | None, bool, float], httpx.AsyncClient] = {}
        self._gates: dict[str, MailboxGate] = {}

    def client_for(self, account: AccountConfig) -> GraphClient:
        """The account's Graph client (ConfigError-free: the loader filled ``account.graph``)."""
        return GraphClient(account, self)

    def http(self, graph: GraphConfig) -> httpx.AsyncClient:
        """The shared httpx client for these TLS and timeout settings."""
        import httpx  # noqa: PLC0415 - only relays that use Graph pay for it

        key = (str(graph.ca_file) if graph.ca_file else None, graph.verify_tls, graph.timeout_s)
        client = self._clients.get(key)
        if client is None:
            verify: ssl.SSLContext | bool = graph.verify_tls
            if graph.ca_file is not None and graph.verify_tls:
                verify = ssl.create_default_context(cafile=str(graph.ca_file))
            client = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(graph.timeout_s),
                                       follow_redirects=False, trust_env=False)
            self._clients[key] = client
        return client

    def gate(self, mailbox: str) -> MailboxGate:
        """The mailbox's gate (created on first use)."""
        key = mailbox.lower()
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = MailboxGate()
        return gate

    async def close(self) -> None:
        """Close the HTTP clients."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


class GraphClient:
    """One account's Graph requests (see the module docstring)."""

    def __init__(self, account: AccountConfig, service: GraphService) -> None:
        assert account.graph is not None, "the loader sets graph for send_via/read_via: graph"
        self.account = account
        self.graph = account.graph
        self.service = service
        self.user_path = "/users/" + urllib.parse.quote(account.mailbox, safe="@")

    def url(self, path: str) -> str:
        """An absolute URL: ``path`` below the configured Graph root, or an absolute nextLink."""
        if path.startswith(("https://", "http://")):
            return path
        return self.graph.url + path

    async def request(self, method: str, path: str, *, what: str, content: bytes | None = None,
                      json: Any = None, headers: dict[str, str] | None = None,
                      expect: tuple[int, ...] = (200,), stream: bool = False) -> httpx.Response:
        """One Graph request with the account's token; GraphError unless the status is expected.

        With ``stream`` the caller reads the body (``aiter_bytes``) and must ``aclose`` it.
        """
        gate = self.service.gate(self.account.mailbox)
        self._check_gate(gate, what)
        tokens = self.service.tokens
        token = await tokens.get_token(self.account.name, GRAPH)
        refreshed = waited = False
        async with gate.slots:
            while True:
                response = await self._send(method, path, token, content, json, headers, stream, what)
                if response.status_code in expect:
                    return response
                answer = await self._answer(response)
                if answer.status == 401 and not refreshed:
                    refreshed = True
                    log.info("account '%s': Microsoft Graph refused the token (%s); refreshing once",
                             self.account.name, answer.code or answer.message or "401")
                    token = await tokens.force_refresh(self.account.name, token, GRAPH)
                    continue
                if answer.throttled and not waited and answer.retry_after_s is not None \
                        and answer.retry_after_s <= WAIT_INLINE_MAX_S:
                    waited = True
                    await self.service.sleep(answer.retry_after_s)
                    continue
                if answer.throttled:
                    wait_s = answer.retry_after_s if answer.retry_after_s is not None else 60.0
                    gate.blocked_until = max(gate.blocked_until, self.service.clock() + wait_s)
                raise graph_error(answer, self.account.name, self.account.mailbox, what)

    def _check_gate(self, gate: MailboxGate, what: str) -> None:
        remaining = gate.blocked_until - self.service.clock()
        if remaining > 0:
            raise graph_error(GraphAnswer(429, "ApplicationThrottled", "still waiting for an earlier "
                                          "Retry-After", remaining), self.account.name,
                              self.account.mailbox, what)

    async def _send(self, method: str, path: str, token: Secret, content: bytes | None, json: Any,
                    headers: dict[str, str] | None, stream: bool, what: str) -> httpx.Response:
        import httpx  # noqa: PLC0415

        http = self.service.http(self.graph)
        all_headers = {"Authorization": f"Bearer {token.reveal()}", "Prefer": 'IdType="ImmutableId"',
                       **(headers or {})}
        try:
            request = http.build_request(method, self.url(path), content=content, json=json,
                                         headers=all_headers)
            return await http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"account '{self.account.name}': {what}: Microsoft Graph at {self.graph.url} could "
                f"not be reached ({type(exc).__name__}: {exc}); check the network and "
                f"accounts.{self.account.name}.graph.url", account=self.account.name) from None

    async def _answer(self, response: httpx.Response) -> GraphAnswer:
        body = await response.aread()
        await response.aclose()
        return parse_answer(response.status_code, dict(response.headers), body, time.time())


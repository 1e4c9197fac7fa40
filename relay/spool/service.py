"""The running spool of a relay: the store and its worker, created once per process.

`relay.app.RelayApp` starts it when an account has ``delivery: spool`` and keeps it across
configuration reloads (a reload gives the worker the new accounts and token manager; moving the
spool directory needs a restart). Each account's messages leave through its normal upstream
path: live SMTP with XOAUTH2, or Microsoft Graph for ``send_via: graph`` (through a
`relay.graph.client.GraphService` the spool owns: it lives as long as the spool, across reloads,
and its per-mailbox throttling gate runs on the spool's clock).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.config.model import AccountConfig, RelayConfig
from relay.metrics import SpoolStats
from relay.smtp.delivery import DeliveryFactory
from relay.spool.clock import Clock, SystemClock
from relay.spool.delivery import SpoolingDeliveries
from relay.spool.sender import MessageSender, SmtpMessageSender
from relay.spool.store import SpoolStore
from relay.spool.worker import SpoolWorker
from relay.tokens.source import TokenSource

if TYPE_CHECKING:
    from relay.graph.client import GraphService

SenderMaker = Callable[[AccountConfig, TokenSource, RelayConfig, str], MessageSender]
"""Makes the sender for an account: (account, tokens, config, our host name) -> MessageSender."""

log = logging.getLogger("relay.spool")


def smtp_sender(account: AccountConfig, tokens: TokenSource, config: RelayConfig,
                hostname: str) -> MessageSender:
    """Live SMTP with XOAUTH2 (the path of accounts with ``send_via: smtp``)."""
    return SmtpMessageSender(account, tokens, config.limits, hostname)


def uses_spool(config: RelayConfig) -> bool:
    """True when any account has ``delivery: spool``."""
    return any(a.delivery == "spool" for a in config.accounts.values())


class SpoolService:
    """Store + worker; ``deliveries(config, tokens)`` for each listener generation."""

    def __init__(self, config: RelayConfig, key: bytes, tokens: TokenSource, *,
                 clock: Clock | None = None, hostname: str | None = None,
                 make_sender: SenderMaker | None = None) -> None:
        self.clock = clock or SystemClock()
        self.make_sender = make_sender or self.upstream_sender
        self._graph: GraphService | None = None
        self.hostname = hostname or socket.getfqdn()
        self.directory = config.spool_directory()
        self.store = SpoolStore(self.directory, key, config.spool, clock=self.clock.now)
        self.worker = SpoolWorker(self.store, config.spool, config.accounts, self._senders(config, tokens),
                                  hostname=self.hostname, clock=self.clock)

    def upstream_sender(self, account: AccountConfig, tokens: TokenSource, config: RelayConfig,
                        hostname: str) -> MessageSender:
        """The account's normal upstream path: Graph for ``send_via: graph``, else live SMTP."""
        if account.send_via != "graph":
            return smtp_sender(account, tokens, config, hostname)
        from relay.spool.graph_sender import GraphMessageSender  # noqa: PLC0415 - only Graph relays

        return GraphMessageSender(account, self._graph_service(tokens).client_for(account), config.limits)

    def _graph_service(self, tokens: TokenSource) -> GraphService:
        """The spool's Graph service (created on first use; a reload hands it the new tokens)."""
        from relay.graph.client import GraphService  # noqa: PLC0415 - imports httpx lazily too

        if self._graph is None:
            self._graph = GraphService(tokens, clock=self.clock.now)
        self._graph.tokens = tokens
        return self._graph

    def _senders(self, config: RelayConfig, tokens: TokenSource) -> Callable[[AccountConfig], MessageSender]:
        def make(account: AccountConfig) -> MessageSender:
            return self.make_sender(account, tokens, config, self.hostname)
        return make

    async def start(self) -> None:
        """Open the directory (dropping unfinished writes) and start delivering what it holds."""
        self.store.open()
        await self.worker.start()
        log.info("spool %s: %d message(s) queued (%d bytes); accounts with delivery: spool answer "
                 "250 once a message is stored here", self.directory, self.store.count, self.store.bytes)

    def deliveries(self, config: RelayConfig, forward: DeliveryFactory) -> SpoolingDeliveries:
        """The delivery factory for a listener generation: the spool for ``delivery: spool``
        accounts, ``forward`` (live forwarding, or Graph's factory around it) for the others."""
        return SpoolingDeliveries(self.store, forward, max_message_bytes=config.limits.max_message_bytes,
                                  clock=self.clock.now)

    def reconfigure(self, config: RelayConfig, tokens: TokenSource) -> None:
        """A reloaded configuration (same spool directory; the caller checked)."""
        self.store.config = config.spool
        self.worker.reconfigure(config.spool, config.accounts, self._senders(config, tokens))

    def stats(self) -> SpoolStats:
        """Depth, size, oldest age (for the spool depth / oldest age alerts) and counters."""
        try:
            corrupt = sum(1 for p in self.store.corrupt_dir.glob("*.msg"))
        except OSError:
            corrupt = 0
        return SpoolStats(messages=self.store.count, bytes=self.store.bytes,
                          oldest_age_s=self.store.oldest_age_s(), corrupt_files=corrupt,
                          per_account=self.worker.depth_by_account(), delivered=self.worker.delivered,
                          bounced=self.worker.bounced)

    async def stop(self) -> None:
        """Stop the worker (running attempts end), then the io threads."""
        await self.worker.stop()
        self.store.close()
        graph, self._graph = self._graph, None
        if graph is not None:
            await graph.close()

"""The IMAP proxy listener: accepts connections, enforces the connection limit, runs sessions.

Each connection is an `ImapProxySession` (relay/imap/session.py); this module only owns the
listening socket, TLS setup (TLS on connect or STARTTLS with the operator's certificate from
``listen.imap``) and the set of live sessions for a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from relay.config.model import RelayConfig
from relay.imap.session import ImapProxySession, SessionContext
from relay.imap.syntax import untagged
from relay.listening import accept_batch, widen_backlog
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.tlsutil import listener_context
from relay.tokens.source import TokenSource
from relay.upstream.stream import set_nodelay

if TYPE_CHECKING:
    from relay.localauth import LocalAuthenticator

log = logging.getLogger("relay.imap")

WRITE_BUFFER_HIGH_BYTES = 256 * 1024


class ImapProxyServer:
    """Local IMAP listener that forwards each logged-in session upstream with XOAUTH2."""

    def __init__(self, config: RelayConfig, tokens: TokenSource,
                 authenticator: LocalAuthenticator, *, observer: RelayObserver | None = None) -> None:
        self._config = config
        listener = config.listen.imap
        self._ctx = SessionContext(
            listener=listener,
            limits=config.limits,
            tokens=tokens,
            authenticator=authenticator,
            tls_context=listener_context(listener, "listen.imap"),
            observer=observer or NULL_OBSERVER,
        )
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        """Bind and start accepting connections (``.port`` is then the bound port)."""
        listener = self._ctx.listener
        for account in self._config.accounts.values():
            if account.imap is not None and not account.imap.verify_tls:
                log.warning("accounts.%s.imap.verify_tls is false: the upstream certificate is "
                            "NOT verified (tests only)", account.name)
        self._server = await asyncio.start_server(
            self._handle, listener.host, listener.port,
            ssl=self._ctx.tls_context if listener.tls == "implicit" else None,
            limit=128 * 1024,
            backlog=accept_batch(asyncio.get_running_loop(), self._config.limits.max_connections),
        )
        widen_backlog(self._server, self._config.limits.max_connections)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("imap proxy listening on %s:%d (tls: %s)", listener.host, self.port, listener.tls)

    def close_listener(self) -> None:
        """Close the listening socket now: new connections are refused (open sessions go on)."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; give sessions ``grace_s`` to finish, then cancel them.

        Cancelled sessions close their upstream connection; IMAP changes are already committed
        command by command, so nothing is lost.
        """
        self.close_listener()
        tasks = set(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        set_nodelay(writer.get_extra_info("socket"))
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        if len(self._tasks) >= self._ctx.limits.max_connections:
            await self._refuse(writer)
            return
        self._tasks.add(task)
        observer = self._ctx.observer
        observer.session_started("imap")
        session: ImapProxySession | None = None
        try:
            session = ImapProxySession(reader, writer, self._ctx, secrets.token_hex(4))
            await session.run()
        except asyncio.CancelledError:
            # stop() cancelled us after the grace period; the session closed itself already.
            # Ending normally keeps asyncio from logging the cancellation as an error.
            return
        finally:
            self._tasks.discard(task)
            account = session.stats.account if session is not None else None
            observer.session_ended("imap", account if account and account != "-" else None, "ok")

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        log.warning("imap: refusing connection from %s: max_connections (%d) reached",
                    peer, self._ctx.limits.max_connections)
        try:
            writer.write(untagged("BYE [UNAVAILABLE] Too many connections; try again later"))
            await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()

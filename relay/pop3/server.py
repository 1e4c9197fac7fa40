"""The POP3 proxy listener: accepts connections, enforces the connection limits, runs sessions.

Each connection is a `Pop3ProxySession` (relay/pop3/session.py); this module only owns the
listening socket, TLS setup (TLS on connect or STLS with the operator's certificate from
``listen.pop3``) and the set of live sessions for a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from relay.config.model import RelayConfig
from relay.listening import accept_batch, widen_backlog
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.pop3.mailbox import MailboxOpener
from relay.pop3.replies import err
from relay.pop3.session import Pop3ProxySession, SessionContext
from relay.pop3.upstream import open_upstream
from relay.sessionlimits import ClientSlots
from relay.tlsutil import listener_context
from relay.tokens.source import TokenSource
from relay.upstream.stream import set_nodelay

if TYPE_CHECKING:
    from relay.localauth import LocalAuthenticator

log = logging.getLogger("relay.pop3")

WRITE_BUFFER_HIGH_BYTES = 256 * 1024


class Pop3ProxyServer:
    """Local POP3 listener that forwards each logged-in session upstream with XOAUTH2."""

    def __init__(self, config: RelayConfig, tokens: TokenSource,
                 authenticator: LocalAuthenticator, *, mailboxes: MailboxOpener | None = None,
                 observer: RelayObserver | None = None) -> None:
        self._config = config
        listener = config.listen.pop3
        self._ctx = SessionContext(
            listener=listener,
            limits=config.limits,
            tokens=tokens,
            authenticator=authenticator,
            tls_context=listener_context(listener, "listen.pop3"),
            open_mailbox=mailboxes or open_upstream,
            observer=observer or NULL_OBSERVER,
        )
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.client_slots = ClientSlots(config.limits.max_connections_per_client)
        self.port = 0

    async def start(self) -> None:
        """Bind and start accepting connections (``.port`` is then the bound port)."""
        listener = self._ctx.listener
        for account in self._config.accounts.values():
            if account.pop3 is not None and not account.pop3.verify_tls:
                log.warning("accounts.%s.pop3.verify_tls is false: the upstream certificate is "
                            "NOT verified (tests only)", account.name)
        self._server = await asyncio.start_server(
            self._handle, listener.host, listener.port,
            ssl=self._ctx.tls_context if listener.tls == "implicit" else None,
            limit=128 * 1024,
            backlog=accept_batch(asyncio.get_running_loop(), self._config.limits.max_connections),
        )
        widen_backlog(self._server, self._config.limits.max_connections)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("pop3 proxy listening on %s:%d (tls: %s)", listener.host, self.port, listener.tls)

    def close_listener(self) -> None:
        """Close the listening socket now: new connections are refused (open sessions go on)."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; give sessions ``grace_s`` to finish, then cancel them.

        Cancelled sessions close their upstream without QUIT, so nothing gets deleted.
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
            await self._refuse(writer, f"max_connections ({self._ctx.limits.max_connections}) reached")
            return
        peer = writer.get_extra_info("peername") or ("?", 0)
        slot = self.client_slots.take(str(peer[0]))
        if slot is None:
            await self._refuse(writer, "limits.max_connections_per_client "
                               f"({self.client_slots.per_client}) reached for this client")
            return
        self._tasks.add(task)
        try:
            session = Pop3ProxySession(reader, writer, self._ctx, secrets.token_hex(4))
            await session.run()
        except asyncio.CancelledError:
            # stop() cancelled us after the grace period; the session closed itself already.
            # Ending normally keeps asyncio from logging the cancellation as an error.
            return
        finally:
            self._tasks.discard(task)
            self.client_slots.release(slot)

    async def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        peer = writer.get_extra_info("peername")
        log.warning("pop3: refusing connection from %s: %s", peer, why)
        try:
            writer.write(err("Too many connections; try again later", "SYS/TEMP"))
            await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()

"""`LineListener`: the listening socket of a line-protocol proxy (POP3, IMAP) and its sessions.

It owns the socket (TLS on connect, or the context STARTTLS/STLS upgrades to, with the operator's
certificate from ``listen.<protocol>``), the connection caps (limits.max_connections per
listener, limits.max_connections_per_client per client address; a refused client gets the
protocol's "too many connections" line), and the set of live sessions for a graceful stop:
`close_listener` refuses new connections at once (SIGTERM), `stop` gives open sessions a grace
period and then cancels them. Each connection runs a `relay.lineproto.session.LineSession` that the
subclass creates.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any, ClassVar

from relay.config.model import ListenerConfig, RelayConfig
from relay.lineproto.session import CLOSE_TIMEOUT_S, LineContext
from relay.listening import accept_batch, widen_backlog
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.sessionlimits import ClientSlots
from relay.tlsutil import listener_context
from relay.tokens.source import TokenSource
from relay.upstream.stream import set_nodelay

if TYPE_CHECKING:
    from relay.lineproto.session import LineSession
    from relay.localauth import LocalAuthenticator

WRITE_BUFFER_HIGH_BYTES = 256 * 1024
STREAM_LIMIT_BYTES = 128 * 1024


class LineListener(abc.ABC):
    """A local listener that runs one proxy session per accepted connection."""

    protocol: ClassVar[str]  # "pop3" / "imap": the listen.<protocol> and accounts.NAME.<protocol> keys
    log: ClassVar[logging.Logger]

    def __init__(self, config: RelayConfig, tokens: TokenSource, authenticator: LocalAuthenticator,
                 *, observer: RelayObserver | None = None) -> None:
        self._config = config
        listener: ListenerConfig = getattr(config.listen, self.protocol)
        self._ctx = LineContext(
            listener=listener,
            limits=config.limits,
            tokens=tokens,
            authenticator=authenticator,
            tls_context=listener_context(listener, f"listen.{self.protocol}"),
            observer=observer or NULL_OBSERVER,
        )
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.client_slots = ClientSlots(config.limits.max_connections_per_client)
        self.port = 0

    @abc.abstractmethod
    def _new_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session_id: str) -> LineSession[Any, Any]:
        """The session for one accepted connection."""

    @abc.abstractmethod
    def _too_many_connections(self) -> bytes:
        """The line a refused client reads before the relay closes the connection."""

    async def start(self) -> None:
        """Bind and start accepting connections (``.port`` is then the bound port)."""
        listener = self._ctx.listener
        for account in self._config.accounts.values():
            endpoint = getattr(account, self.protocol)
            if endpoint is not None and not endpoint.verify_tls:
                self.log.warning("accounts.%s.%s.verify_tls is false: the upstream certificate is "
                                 "NOT verified (tests only)", account.name, self.protocol)
        self._server = await asyncio.start_server(
            self._handle, listener.host, listener.port,
            ssl=self._ctx.tls_context if listener.tls == "implicit" else None,
            limit=STREAM_LIMIT_BYTES,
            backlog=accept_batch(asyncio.get_running_loop(), self._config.limits.max_connections),
        )
        widen_backlog(self._server, self._config.limits.max_connections)
        self.port = self._server.sockets[0].getsockname()[1]
        self.log.info("%s proxy listening on %s:%d (tls: %s)", self.protocol, listener.host,
                      self.port, listener.tls)

    def close_listener(self) -> None:
        """Close the listening socket now: new connections are refused (open sessions go on)."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; give sessions ``grace_s`` to finish, then cancel them (each session
        closes its upstream: POP3 without QUIT, so nothing is deleted; IMAP changes are committed
        command by command)."""
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
        limits = self._ctx.limits
        if len(self._tasks) >= limits.max_connections:
            await self._refuse(writer, f"limits.max_connections ({limits.max_connections}) reached")
            return
        peer = writer.get_extra_info("peername") or ("?", 0)
        slot = self.client_slots.take(str(peer[0]))
        if slot is None:
            await self._refuse(writer, "limits.max_connections_per_client "
                               f"({self.client_slots.per_client}) reached for this client")
            return
        self._tasks.add(task)
        try:
            await self._new_session(reader, writer, secrets.token_hex(4)).run()
        except asyncio.CancelledError:
            # stop() cancelled us after the grace period; the session closed itself already.
            # Ending normally keeps asyncio from logging the cancellation as an error.
            return
        finally:
            self._tasks.discard(task)
            self.client_slots.release(slot)

    async def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        self.log.warning("%s: refusing connection from %s: %s", self.protocol,
                         writer.get_extra_info("peername"), why)
        try:
            writer.write(self._too_many_connections())
            await asyncio.wait_for(writer.drain(), CLOSE_TIMEOUT_S)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)
        except (OSError, TimeoutError):
            writer.transport.abort()

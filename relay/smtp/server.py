"""SmtpRelayServer: the local SMTP listener (aiosmtpd) with a connection limit and graceful stop."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from relay.config.model import RelayConfig
from relay.listening import accept_batch, widen_backlog
from relay.logging_setup import install_aiosmtpd_mask
from relay.metrics import RelayObserver
from relay.sessionlimits import ClientSlots
from relay.smtp.delivery import DeliveryFactory
from relay.smtp.handler import RelayHandler
from relay.smtp.replies import TOO_MANY_CONNECTIONS
from relay.smtp.session import RelaySMTP
from relay.tlsutil import listener_context
from relay.tokens.source import TokenSource

log = logging.getLogger("relay.smtp")
_TOO_MANY = TOO_MANY_CONNECTIONS.wire.encode() + b"\r\n"

# Implicit TLS: a connection counts as a session only after its handshake, which must finish in this.
TLS_HANDSHAKE_TIMEOUT_S = 30.0


class _Refuse(asyncio.Protocol):
    """Answers 421 and closes: used when limits.max_connections sessions are already open."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: uvloop's transports are not asyncio.WriteTransport subclasses.
        transport.write(_TOO_MANY)  # type: ignore[attr-defined]
        transport.close()


class SmtpRelayServer:
    """Listens on ``config.listen.smtp`` and relays each session to the account's upstream."""

    def __init__(self, config: RelayConfig, tokens: TokenSource, authenticator: Any,
                 *, hostname: str | None = None, deliveries: DeliveryFactory | None = None,
                 observer: RelayObserver | None = None) -> None:
        install_aiosmtpd_mask()  # aiosmtpd's mail.log may echo a base64 password otherwise
        self.config = config
        self.listener = config.listen.smtp
        self.hostname = hostname or socket.getfqdn()
        self.handler = RelayHandler(config, tokens, authenticator, hostname=self.hostname,
                                    deliveries=deliveries)
        if observer is not None:
            self.handler.observer = observer
        self._tls = listener_context(self.listener, "listen.smtp")
        self._server: asyncio.Server | None = None
        self._sessions: set[RelaySMTP] = set()
        self.client_slots = ClientSlots(config.limits.max_connections_per_client)
        self.port = 0

    @property
    def active_sessions(self) -> int:
        """The number of client sessions currently open."""
        return len(self._sessions)

    def _make_protocol(self) -> asyncio.Protocol:
        if len(self._sessions) >= self.config.limits.max_connections:
            log.warning("smtp: limits.max_connections (%d) reached; refusing a connection",
                        self.config.limits.max_connections)
            return _Refuse()
        limits = self.config.limits
        proto = RelaySMTP(
            self.handler,
            data_size_limit=limits.max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=self.hostname,
            ident="xoauth2-relay",
            # STARTTLS is offered only for tls: starttls; with implicit TLS the socket is TLS.
            tls_context=self._tls if self.listener.tls == "starttls" else None,
            timeout=limits.smtp_command_timeout_s,
            # AUTH over plaintext is decided per client by the handler (LocalAuthenticator rule).
            auth_require_tls=False,
            bare_lf=self.listener.bare_lf,
            loop=asyncio.get_running_loop(),
        )
        proto.apply_limits(limits, self.client_slots, on_open=self._opened)
        return proto

    def _opened(self, proto: RelaySMTP) -> None:
        """A connection was admitted (after the TLS handshake with implicit TLS): count it."""
        self._sessions.add(proto)
        self.handler.observer.session_started("smtp")
        asyncio.get_running_loop().create_task(self._forget_when_closed(proto))

    async def _forget_when_closed(self, proto: RelaySMTP) -> None:
        await proto.closed.wait()
        self._sessions.discard(proto)

    async def start(self) -> None:
        """Bind and start accepting; ``.port`` is the bound port afterwards."""
        for account in self.config.accounts.values():
            if account.smtp is not None and not account.smtp.verify_tls:
                log.warning("accounts.%s.smtp.verify_tls is false: the upstream certificate is "
                            "NOT verified (tests only)", account.name)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol, host=self.listener.host, port=self.listener.port,
            ssl=self._tls if self.listener.tls == "implicit" else None,
            reuse_address=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if self.listener.tls == "implicit" else None,
            backlog=accept_batch(loop, self.config.limits.max_connections),
        )
        widen_backlog(self._server, self.config.limits.max_connections)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smtp: listening on %s:%d (tls: %s)", self.listener.host, self.port, self.listener.tls)

    def close_listener(self) -> None:
        """Close the listening socket now: new connections are refused (open sessions go on)."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let running sessions finish for up to ``grace_s``, then close them (and
        the pooled upstream sessions)."""
        if grace_s is None:
            grace_s = self.config.limits.shutdown_grace_s
        self.close_listener()
        pending = [asyncio.ensure_future(s.closed.wait()) for s in list(self._sessions)]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
            for session in list(self._sessions):
                session.close()
            if still:
                log.info("smtp: closed %d session(s) still open after %.1fs grace", len(still), grace_s)
                await asyncio.wait([asyncio.ensure_future(s.closed.wait()) for s in list(self._sessions)],
                                   timeout=5)
        await self.handler.close()  # QUIT the pooled upstream sessions, once no client can use them
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

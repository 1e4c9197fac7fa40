"""One proxied IMAP connection: the pre-login loop around `ImapProtocol`, then a byte relay.

Before login the relay answers by itself (relay/imap/protocol.py). The login command is checked
against the local users, then the account's upstream is logged in with XOAUTH2; the client's
tagged reply comes from that result, carrying the upstream's post-login capabilities. From then
on bytes flow unchanged both ways (IDLE, literals, FETCH of any size) through `Splice`
(relay/imap/splice.py): the two transports feed each other directly, and a write buffer above its
high-water mark pauses reading on the other side, so a slow reader slows the sender down instead
of filling memory. The session ends when either side closes, or after
``limits.imap_idle_timeout_s`` without a byte in either direction (RFC 9051 5.4: at least 30
minutes; IDLE clients re-issue IDLE every 29 minutes, RFC 2177).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relay.config.model import AccountConfig, LimitsConfig, ListenerConfig
from relay.drain import needs_drain
from relay.errors import (
    AuthorizationNeeded,
    OAuthError,
    RelayError,
    TokenRefreshFailed,
    UpstreamAuthRejected,
    UpstreamError,
    UpstreamUnavailable,
)
from relay.imap.protocol import NEED_DATA, PAUSED, ImapProtocol, LoginAttempt, Reply, StartTls
from relay.imap.splice import Splice
from relay.imap.syntax import tagged, untagged
from relay.imap.upstream import UpstreamImapSession, client_capabilities, open_upstream
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.tokens.source import TokenSource

if TYPE_CHECKING:
    from relay.localauth import LocalAuthenticator

log = logging.getLogger("relay.imap")

CLIENT_READ_BYTES = 64 * 1024
PRE_LOGIN_TIMEOUT_CAP_S = 300.0  # RFC 9051 5.4 allows a shorter timer before login
HALF_CLOSE_GRACE_S = 10.0  # after the client's EOF, time for the upstream's last replies
# Upstream NO codes passed on to the client as they are (RFC 5530): they mean "not now".
_PASSED_THROUGH_CODES = ("[UNAVAILABLE]", "[INUSE]", "[LIMIT]")


@dataclass
class SessionStats:
    """Counters for the one log line written when a session ends."""

    account: str = "-"
    commands: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    outcome: str = "closed"


class _ClientGone(Exception):
    """The client disconnected, or sent nothing for longer than the timeout."""


@dataclass
class SessionContext:
    """What a session needs from the server (all shared, read-only)."""

    listener: ListenerConfig
    limits: LimitsConfig
    tokens: TokenSource
    authenticator: LocalAuthenticator
    tls_context: ssl.SSLContext | None  # the listener's context (implicit TLS or STARTTLS)
    observer: RelayObserver = field(default=NULL_OBSERVER)  # relay.metrics


class ImapProxySession:
    """Runs one client connection from greeting to close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: SessionContext, session_id: str) -> None:
        self._reader = reader
        self._writer = writer
        self._ctx = ctx
        self.session_id = session_id
        self._started = time.monotonic()
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_ip = str(peer[0])
        self.client = f"{peer[0]}:{peer[1]}"
        tls_active = writer.get_extra_info("sslcontext") is not None
        self._proto = ImapProtocol(
            starttls_available=ctx.listener.tls == "starttls" and ctx.tls_context is not None,
            tls_active=tls_active, plaintext_allowed=self._plaintext_allowed(tls_active))
        self._upstream: UpstreamImapSession | None = None
        self._spliced = False
        self.stats = SessionStats()

    def _plaintext_allowed(self, tls_active: bool) -> bool:
        return self._ctx.authenticator.plaintext_auth_allowed(
            self._ctx.listener, self.client_ip, tls_active)

    # --- pre-login client I/O --------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.stats.bytes_out += len(data)
        try:
            self._writer.write(data)
            if needs_drain(self._writer):
                async with asyncio.timeout(self._pre_login_timeout_s):
                    await self._writer.drain()
        except (OSError, TimeoutError) as exc:
            raise _ClientGone(f"client write failed: {exc or 'timeout'}") from None

    @property
    def _pre_login_timeout_s(self) -> float:
        return min(self._ctx.limits.imap_idle_timeout_s, PRE_LOGIN_TIMEOUT_CAP_S)

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._pre_login_timeout_s):
                data = await self._reader.read(CLIENT_READ_BYTES)
        except TimeoutError:
            self.stats.outcome = "idle timeout before login"
            with contextlib.suppress(_ClientGone):
                await self._write(untagged("BYE Autologout; idle for too long"))
            raise _ClientGone("idle timeout") from None
        except OSError as exc:
            raise _ClientGone(f"client read failed: {exc}") from None
        if not data:
            raise _ClientGone("client disconnected")
        self.stats.bytes_in += len(data)
        return data

    # --- main loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until LOGOUT, disconnect, timeout or error; log one line."""
        try:
            await self._write(self._proto.greeting())
            if await self._pre_login():
                await self._relay()
        except _ClientGone as exc:
            if self.stats.outcome == "closed":
                self.stats.outcome = str(exc)
        except asyncio.CancelledError:
            self.stats.outcome = "shutdown"
            raise
        except (RelayError, OSError) as exc:
            self.stats.outcome = f"error: {exc}"
            log.warning("imap session %s: %s", self.session_id, exc)
        finally:
            await self._close()

    async def _pre_login(self) -> bool:
        """Answer commands until a login succeeds (True) or the client leaves (False)."""
        proto = self._proto
        while True:
            event = proto.next_event()
            if event is NEED_DATA:
                proto.receive_data(await self._read())
                continue
            if event is PAUSED:  # only reachable if a decision was not made: a bug
                raise RuntimeError("IMAP protocol paused without a pending decision")
            self.stats.commands += 1
            if isinstance(event, Reply):
                await self._write(event.data)
                if event.close:
                    self.stats.outcome = "logout"
                    return False
            elif isinstance(event, LoginAttempt):
                if await self._login(event):
                    return True
            elif isinstance(event, StartTls):
                await self._start_tls(event)

    async def _start_tls(self, event: StartTls) -> None:
        assert self._ctx.tls_context is not None
        # As in the POP3 session: stop reading before the OK and drop clear text that was
        # pipelined behind STARTTLS (RFC 9051 11.1; asyncio has no public way to empty the buffer).
        self._writer.transport.pause_reading()  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        await self._write(event.reply)
        try:
            await asyncio.wait_for(self._writer.start_tls(self._ctx.tls_context),
                                   self._pre_login_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise _ClientGone(f"TLS handshake failed: {exc or 'timeout'}") from None
        self._proto.tls_started(plaintext_allowed=self._plaintext_allowed(True))

    # --- login -----------------------------------------------------------------------------

    async def _login(self, event: LoginAttempt) -> bool:
        account = await self._ctx.authenticator.authenticate(
            event.username, event.password.reveal(), self.client_ip)
        if account is None:
            self._ctx.observer.local_auth_failed("imap")
            self._proto.login_failed()
            await self._write(tagged(event.tag, "NO", "Invalid credentials", "AUTHENTICATIONFAILED"))
            return False
        self.stats.account = account.name
        reply = await self._connect_upstream(account, event.tag)
        if self._upstream is None:
            self._proto.login_failed()
            await self._write(reply)
            return False
        self._proto.login_succeeded()
        await self._write(reply)
        return True

    async def _connect_upstream(self, account: AccountConfig, tag: bytes) -> bytes:
        """Log in upstream; return the tagged reply for the client (``_upstream`` set on success)."""
        if account.imap is None:
            log.warning("imap login for account '%s' refused: the account has no imap upstream "
                        "(set accounts.%s.imap)", account.name, account.name)
            return tagged(tag, "NO", f"Account {account.username} has no IMAP mailbox configured",
                          "CONTACTADMIN")
        try:
            self._upstream, _ok = await open_upstream(account, self._ctx.tokens, self._ctx.limits)
        except AuthorizationNeeded as exc:
            self._log_login_failure(account, exc, f"run `relay authorize {account.name}`")
            return tagged(tag, "NO", "Mailbox re-authorization needed; ask the relay operator",
                          "CONTACTADMIN")
        except (TokenRefreshFailed, OAuthError) as exc:
            self._log_login_failure(account, exc, "the OAuth provider is unreachable or failing; "
                                    "the client may retry later")
            return tagged(tag, "NO", "Cannot obtain an access token right now; try again later",
                          "UNAVAILABLE")
        except UpstreamUnavailable as exc:
            self._log_login_failure(account, exc, "check the upstream host, port and TLS settings "
                                    f"under accounts.{account.name}.imap")
            return tagged(tag, "NO", "Upstream mail server unavailable; try again later", "UNAVAILABLE")
        except UpstreamAuthRejected as exc:
            return self._rejected(account, exc, tag)
        except (UpstreamError, RelayError) as exc:
            self._log_login_failure(account, exc, "see the error above")
            return tagged(tag, "NO", "Upstream mail server error; try again later", "UNAVAILABLE")
        caps = client_capabilities(self._upstream.capabilities)
        return tagged(tag, "OK", "Logged in", f"CAPABILITY {caps}")

    def _rejected(self, account: AccountConfig, exc: UpstreamAuthRejected, tag: bytes) -> bytes:
        upstream_text = exc.reply.text if exc.reply else ""
        if upstream_text.upper().startswith(_PASSED_THROUGH_CODES):
            self._log_login_failure(account, exc, "the upstream mailbox refused the session")
            return tag + b" NO " + upstream_text.encode() + b"\r\n"
        self._log_login_failure(account, exc, f"the token was rejected after a refresh: check that "
                                f"IMAP is enabled for {account.mailbox}, the app has the IMAP "
                                f"permission (IMAP.AccessAsUser.All / IMAP.AccessAsApp, or "
                                f"https://mail.google.com/), then run `relay authorize "
                                f"{account.name}`")
        return tagged(tag, "NO", "Upstream mailbox login rejected; re-authorization needed",
                      "CONTACTADMIN")

    def _log_login_failure(self, account: AccountConfig, exc: Exception, fix: str) -> None:
        provider_error = getattr(exc, "provider_error", None)
        detail = f" (provider error: {provider_error})" if provider_error else ""
        log.warning("imap session %s: upstream login for account '%s' (%s) failed: %s%s; fix: %s",
                    self.session_id, account.name, account.mailbox, exc, detail, fix)

    # --- after login: the byte relay -------------------------------------------------------

    async def _relay(self) -> None:
        """Splice client and upstream until either ends or the session idles out."""
        upstream = self._upstream
        assert upstream is not None
        # Bytes already read past the login on each side go first. The stream readers are not
        # used again (the splice takes the transports over), so their buffers are emptied here;
        # asyncio has no public way to do that, as in the STARTTLS code above.
        to_upstream = self._proto.take_buffered() + _drain_reader(self._reader)
        to_client = upstream.take_buffered() + _drain_reader(upstream.reader)
        upstream.closed = True  # from now on the splice closes the connection
        self._spliced = True
        splice = Splice(self._writer.transport, upstream.writer.transport,
                        idle_timeout_s=self._ctx.limits.imap_idle_timeout_s,
                        grace_s=HALF_CLOSE_GRACE_S,
                        idle_goodbye=untagged("BYE Autologout; idle for too long"))
        try:
            how = await splice.run(to_upstream, to_client)
        finally:
            self.stats.bytes_in += splice.stats.to_upstream
            self.stats.bytes_out += splice.stats.to_client
        self.stats.outcome = how

    # --- close -----------------------------------------------------------------------------

    async def _close(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()
        if self._spliced:  # the splice closed both transports already
            self._log_end()
            return
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            self._writer.transport.abort()
        self._log_end()

    def _log_end(self) -> None:
        s = self.stats
        log.info("imap session %s ended: account=%s client=%s commands=%d bytes_in=%d "
                 "bytes_out=%d outcome=%s", self.session_id, s.account, self.client, s.commands,
                 s.bytes_in, s.bytes_out, s.outcome,
                 extra={"account": s.account, "session": self.session_id, "client": self.client,
                        "protocol": "imap", "outcome": s.outcome, "upstream_reply": None,
                        "duration_ms": round((time.monotonic() - self._started) * 1000),
                        "bytes": s.bytes_out, "bytes_in": s.bytes_in})


def _drain_reader(reader: asyncio.StreamReader) -> bytes:
    """Take whatever a StreamReader has buffered (it is not read again after this)."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    data = bytes(buffer)
    buffer.clear()
    return data

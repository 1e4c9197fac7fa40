"""One proxied POP3 connection: the thin asyncio loop around `Pop3Protocol`.

The loop pulls events from the protocol, reads from the client only when the protocol needs
data (so pipelined input waits in the socket, not in memory), and streams multi-line upstream
replies through chunk by chunk with ``drain`` between chunks (a slow client slows the upstream
read, never fills memory). Safety rules for the mailbox:

* QUIT upstream is sent only for the client's QUIT in TRANSACTION; a disconnect, idle timeout,
  error or shutdown closes the upstream without QUIT, so the upstream applies no deletions.
* If the upstream fails in the middle of a multi-line reply, the client connection is closed
  without the terminating ".", so a truncated message is never taken as complete.
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
from relay.explain import log_explanation
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.pop3.mailbox import MailboxOpener, Pop3Mailbox
from relay.pop3.protocol import (
    NEED_DATA,
    PAUSED,
    LoginAttempt,
    Pop3Protocol,
    Reply,
    StartTls,
    UpstreamCommand,
)
from relay.pop3.replies import err, ok
from relay.pop3.upstream import open_upstream
from relay.sessionlimits import CommandBudget
from relay.tokens.source import TokenSource

if TYPE_CHECKING:
    from relay.localauth import LocalAuthenticator

log = logging.getLogger("relay.pop3")

CLIENT_READ_BYTES = 64 * 1024
_PASSED_THROUGH_CODES = frozenset({"IN-USE", "LOGIN-DELAY", "SYS/PERM"})
_WASTED_COMMANDS = frozenset({"NOOP", "RSET"})  # forwarded, but no progress (relay.sessionlimits)
_PROGRESS_COMMANDS = frozenset({"RETR", "TOP", "DELE"})


@dataclass
class SessionStats:
    """Counters for the one log line written when a session ends."""

    account: str = "-"
    commands: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    outcome: str = "closed"
    result: str = "ok"  # for metrics: ok | auth_failed | upstream_error
    upstream_reply: str | None = None  # the upstream's last status line
    started: float = field(default_factory=time.monotonic)


class _ClientGone(Exception):
    """The client disconnected, or stopped reading for longer than the idle timeout."""


@dataclass
class SessionContext:
    """What a session needs from the server (all shared, read-only)."""

    listener: ListenerConfig
    limits: LimitsConfig
    tokens: TokenSource
    authenticator: LocalAuthenticator
    tls_context: ssl.SSLContext | None  # the listener's context (implicit TLS or STLS)
    open_mailbox: MailboxOpener = open_upstream  # relay.pop3.mailbox: upstream POP3 or Graph
    observer: RelayObserver = field(default=NULL_OBSERVER)  # relay.metrics


class Pop3ProxySession:
    """Runs one client connection from greeting to close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: SessionContext, session_id: str) -> None:
        self._reader = reader
        self._writer = writer
        self._ctx = ctx
        self.session_id = session_id
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_ip = str(peer[0])
        self.client = f"{peer[0]}:{peer[1]}"
        tls_active = writer.get_extra_info("sslcontext") is not None
        self._proto = Pop3Protocol(
            stls_available=ctx.listener.tls == "starttls" and ctx.tls_context is not None,
            tls_active=tls_active,
            plaintext_allowed=self._plaintext_allowed(tls_active),
            bare_lf=ctx.listener.bare_lf,
        )
        self._upstream: Pop3Mailbox | None = None
        self.stats = SessionStats()
        self._budget = CommandBudget(ctx.limits.max_commands_without_progress)
        loop = asyncio.get_running_loop()
        self._login_deadline: float | None = loop.time() + ctx.limits.login_timeout_s
        self._line_deadline: float | None = None  # when the line being read must be complete

    def _plaintext_allowed(self, tls_active: bool) -> bool:
        return self._ctx.authenticator.plaintext_auth_allowed(
            self._ctx.listener, self.client_ip, tls_active)

    # --- client I/O ------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.stats.bytes_out += len(data)
        try:
            self._writer.write(data)
            # Drain (and arm its timer) only when the buffer is at its high-water mark or the
            # connection is closing (relay.drain): a timer per reply and per chunk is measurable.
            # asyncio.timeout, not wait_for: wait_for wraps the coroutine in a new Task per call.
            if needs_drain(self._writer):
                async with asyncio.timeout(self._ctx.limits.pop3_idle_timeout_s):
                    await self._writer.drain()
        except (OSError, TimeoutError) as exc:
            raise _ClientGone(f"client write failed: {exc or 'timeout'}") from None

    async def _read(self) -> bytes:
        """Read more of the current command line. The idle timeout runs from the start of the
        line (a byte at a time does not keep a slot), and before login the login deadline too."""
        loop = asyncio.get_running_loop()
        if self._line_deadline is None:
            self._line_deadline = loop.time() + self._ctx.limits.pop3_idle_timeout_s
        deadline = self._line_deadline
        if self._login_deadline is not None:
            deadline = min(deadline, self._login_deadline)
        try:
            async with asyncio.timeout_at(deadline):  # see _write
                data = await self._reader.read(CLIENT_READ_BYTES)
        except TimeoutError:
            login_late = self._login_deadline is not None and deadline == self._login_deadline
            self.stats.outcome = "login timeout" if login_late else "idle timeout"
            text = "Login timeout" if login_late else "Disconnected for inactivity"
            with contextlib.suppress(_ClientGone):
                await self._write(err(text, "SYS/TEMP"))
            raise _ClientGone(self.stats.outcome) from None
        except OSError as exc:
            raise _ClientGone(f"client read failed: {exc}") from None
        if not data:
            raise _ClientGone("client disconnected")
        self.stats.bytes_in += len(data)
        return data

    async def _spend(self) -> None:
        """Count a command without progress; over the budget, say so and close."""
        if not self._budget.spend():
            self.stats.outcome = "too many commands without progress"
            with contextlib.suppress(_ClientGone):
                await self._write(err("Too many commands without progress; closing", "SYS/TEMP"))
            raise _ClientGone(self.stats.outcome)

    # --- main loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until QUIT, disconnect, timeout or error; log one line."""
        self._ctx.observer.session_started("pop3")
        try:
            await self._write(ok("POP3 relay ready"))
            await self._loop()
        except _ClientGone as exc:
            if self.stats.outcome == "closed":
                self.stats.outcome = str(exc)
        except asyncio.CancelledError:
            self.stats.outcome = "shutdown"
            raise
        except (RelayError, OSError) as exc:
            self.stats.outcome = f"error: {exc}"
            log.warning("pop3 session %s: %s", self.session_id, exc)
        finally:
            await self._close()

    async def _loop(self) -> None:
        proto = self._proto
        while True:
            event = proto.next_event()
            if event is NEED_DATA:
                proto.receive_data(await self._read())
                continue
            if event is PAUSED:  # only reachable if a decision was not made: a bug
                raise RuntimeError("POP3 protocol paused without a pending decision")
            self._line_deadline = None  # a command line is complete: the next one gets its own
            self.stats.commands += 1
            if isinstance(event, Reply):
                if event.data.startswith(b"-ERR") and not event.close:
                    await self._spend()
                await self._write(event.data)
                if event.close:
                    self.stats.outcome = "quit"
                    return
            elif isinstance(event, LoginAttempt):
                await self._login(event)
            elif isinstance(event, StartTls):
                await self._start_tls(event)
            elif isinstance(event, UpstreamCommand):
                if event.keyword in _WASTED_COMMANDS:
                    await self._spend()
                elif event.keyword in _PROGRESS_COMMANDS:
                    self._budget.progress()
                await self._forward(event)
                if event.quit:
                    return

    async def _start_tls(self, event: StartTls) -> None:
        assert self._ctx.tls_context is not None
        # Stop reading before the +OK: the client's ClientHello must reach the TLS layer, not the
        # clear-text stream buffer. Whatever already sits in that buffer came before the +OK, so
        # it is clear text pipelined behind STLS and is dropped (RFC 2595 section 4). asyncio
        # offers no public way to empty a StreamReader, hence the private attribute.
        self._writer.transport.pause_reading()  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        await self._write(event.reply)
        try:
            await asyncio.wait_for(self._writer.start_tls(self._ctx.tls_context),
                                   self._ctx.limits.pop3_idle_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise _ClientGone(f"TLS handshake failed: {exc or 'timeout'}") from None
        self._proto.tls_started(plaintext_allowed=self._plaintext_allowed(True))

    # --- login -----------------------------------------------------------------------------

    async def _login(self, event: LoginAttempt) -> None:
        account = await self._ctx.authenticator.authenticate(
            event.username, event.password.reveal(), self.client_ip)
        if account is None:
            self._ctx.observer.local_auth_failed("pop3")
            self.stats.result = "auth_failed"
            self._proto.login_failed()
            await self._write(err("Invalid credentials", "AUTH"))
            return
        self.stats.result = "ok"
        self.stats.account = account.name
        reply = await self._connect_upstream(account)
        if self._upstream is None:
            self._proto.login_failed()
        else:
            self._proto.set_upstream_capabilities(self._upstream.capabilities)
            self._proto.login_succeeded()
            self._login_deadline = None
            self._budget.progress()
        await self._write(reply)

    async def _connect_upstream(self, account: AccountConfig) -> bytes:
        """Log in upstream; return the reply for the client (and set ``_upstream`` on success)."""
        if not account.can_read:
            log.warning("pop3 login for account '%s' refused: the account has no pop3 upstream "
                        "(set accounts.%s.pop3)", account.name, account.name)
            return err(f"Account {account.username} has no POP3 mailbox configured", "SYS/PERM")
        started = time.monotonic()
        try:
            self._upstream, status = await self._ctx.open_mailbox(account, self._ctx.tokens,
                                                                  self._ctx.limits)
            self._ctx.observer.upstream_login(account.name, "pop3", time.monotonic() - started, 200)
        except UpstreamAuthRejected as exc:
            self._ctx.observer.upstream_login(account.name, "pop3", time.monotonic() - started, 535)
            return self._auth_rejected(account, exc)
        except AuthorizationNeeded as exc:
            self._log_login_failure(account, exc, f"run `relay authorize {account.name}`")
            return err("Mailbox re-authorization needed; ask the relay operator", "AUTH")
        except (TokenRefreshFailed, OAuthError) as exc:
            self._log_login_failure(account, exc, "the OAuth provider is unreachable or failing; "
                                    "the client may retry later")
            return err("Cannot obtain an access token right now; try again later", "SYS/TEMP")
        except UpstreamUnavailable as exc:
            self._log_login_failure(account, exc, "check the upstream host, port and TLS settings "
                                    f"under accounts.{account.name}.pop3")
            return err("Upstream mail server unavailable; try again later", "SYS/TEMP")
        except (UpstreamError, RelayError) as exc:
            self._log_login_failure(account, exc, "see the error above")
            return err("Upstream mail server error; try again later", "SYS/TEMP")
        except Exception:  # a bug: the client still gets an answer it can retry on
            log.exception("pop3 session %s: unexpected error logging in upstream for account '%s'",
                          self.session_id, account.name)
            return err("Local error; try again later", "SYS/TEMP")
        return status.raw

    def _auth_rejected(self, account: AccountConfig, exc: UpstreamAuthRejected) -> bytes:
        """The upstream refused the token even after a refresh: the client's reply."""
        code = exc.reply.enhanced_code if exc.reply else None
        if code in _PASSED_THROUGH_CODES:
            self._log_login_failure(account, exc, "the upstream mailbox refused the session")
            return f"-ERR {exc.reply.text if exc.reply else ''}\r\n".encode()
        self._log_login_failure(account, exc, f"the token was rejected after a refresh: check "
                                f"that POP access is enabled for {account.mailbox} and the "
                                f"app has POP permission, then run `relay authorize "
                                f"{account.name}`")
        return err("Upstream mailbox login rejected; re-authorization needed", "AUTH")

    def _log_login_failure(self, account: AccountConfig, exc: Exception, fix: str) -> None:
        provider_error = getattr(exc, "provider_error", None)
        detail = f" (provider error: {provider_error})" if provider_error else ""
        explanation = (f"upstream login for account '{account.name}' ({account.mailbox}) failed: "
                       f"{exc}{detail}; fix: {fix}")
        self.stats.result = "upstream_error"
        self._ctx.observer.upstream_failure(account.name, "pop3", explanation)
        log.warning("pop3 session %s: %s", self.session_id, explanation,
                    extra={"account": account.name, "session": self.session_id, "client": self.client,
                           "protocol": "pop3", "outcome": "upstream_error",
                           "upstream_reply": str(getattr(exc, "reply", None) or "") or None})
        reply = getattr(exc, "reply", None)  # an UpstreamReply value, when the upstream answered
        log_explanation(account.name, account.mailbox, reply.one_line() if reply else str(exc))

    # --- TRANSACTION -----------------------------------------------------------------------

    async def _forward(self, command: UpstreamCommand) -> None:
        upstream = self._upstream
        assert upstream is not None
        try:
            if command.quit:
                status = await upstream.quit()
                self.stats.outcome = "quit"
                await self._write(status.raw)
                return
            status = await upstream.command(command.line)
            self.stats.upstream_reply = _status_line(status.raw)
        except (UpstreamError, Exception) as exc:
            # Nothing of this reply reached the client yet: say why, then close.
            if not isinstance(exc, UpstreamError):
                log.exception("pop3 session %s: unexpected upstream error", self.session_id)
            self.stats.outcome = f"upstream failed: {exc}"
            await self._write(err("Upstream mail server connection lost", "SYS/TEMP"))
            raise _ClientGone(self.stats.outcome) from None
        if not (status.ok and command.multiline):
            await self._write(status.raw)
            return
        if command.keyword == "RETR" and self.stats.account != "-":
            self._ctx.observer.message_fetched(self.stats.account, 0)
        # The status line goes out with the first body part in one send when that part is
        # already buffered (the usual RETR: status and body arrive together); otherwise at once.
        pending: bytes | None = status.raw if upstream.has_buffered_data else None
        if pending is None:
            await self._write(status.raw)
        try:
            async for part in upstream.stream_body():
                if pending is not None:
                    await self._write(pending + part)
                    pending = None
                else:
                    await self._write(part)
        except UpstreamError as exc:
            # Mid-body: close without the terminating "." so the client sees an incomplete reply.
            self.stats.outcome = f"upstream failed mid-reply: {exc}"
            raise _ClientGone(self.stats.outcome) from None

    # --- close -----------------------------------------------------------------------------

    async def _close(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()  # without QUIT unless quit() already ran
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            self._writer.transport.abort()
        s = self.stats
        self._ctx.observer.session_ended("pop3", s.account if s.account != "-" else None, s.result)
        log.info("pop3 session %s ended: account=%s client=%s commands=%d bytes_in=%d "
                 "bytes_out=%d outcome=%s", self.session_id, s.account, self.client, s.commands,
                 s.bytes_in, s.bytes_out, s.outcome,
                 extra={"account": s.account, "session": self.session_id, "client": self.client,
                        "protocol": "pop3", "outcome": s.result, "detail": s.outcome,
                        "upstream_reply": s.upstream_reply,
                        "duration_ms": round((time.monotonic() - s.started) * 1000),
                        "bytes": s.bytes_out, "bytes_in": s.bytes_in})


def _status_line(raw: bytes) -> str:
    """The first line of a POP3 status, for the session log line (never a body; at most 200 chars)."""
    return raw.split(b"\r\n", 1)[0][:200].decode("utf-8", "replace")

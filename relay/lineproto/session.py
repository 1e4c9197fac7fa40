"""`LineSession`: one client connection of a line protocol (POP3, IMAP), from greeting to close.

The session feeds a pure core (`relay.lineproto.events.LineCore`): it reads from the client only
when the core needs data (pipelined input waits in the socket, not in memory), writes the replies
the core hands out, runs the STARTTLS/STLS handshake and decides logins: the local check, then the
account's upstream login, every failure mapped to a `relay.lineproto.login.Refusal` that the
subclass words in its protocol. Limits: the idle timeout runs per command line (a byte at a time
does not keep a slot), the login deadline (limits.login_timeout_s) until a login succeeds, and the
budget of commands without progress (relay.sessionlimits). `_close` is the one teardown: upstream
closed, client connection closed, metrics, one log line.

A subclass says what differs: its core and greeting, the words of its replies, which replies waste
the budget, and what other events mean (`_on_event`: POP3 forwards commands; IMAP, once logged
in, splices the two connections and hands the transports over).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Generic, NoReturn, Protocol, TypeVar

from relay.config.model import AccountConfig, LimitsConfig, ListenerConfig
from relay.drain import needs_drain
from relay.errors import RelayError, UpstreamAuthRejected
from relay.explain import log_explanation
from relay.lazytimer import LazyDeadline
from relay.lineproto.events import NEED_DATA, PAUSED, Credentials, LineCore, Reply, StartTls
from relay.lineproto.login import Refusal, classify, token_rejected_fix
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.sessionlimits import CommandBudget
from relay.tokens.source import TokenSource

if TYPE_CHECKING:
    from relay.localauth import LocalAuthenticator

CLIENT_READ_BYTES = 64 * 1024
CLOSE_TIMEOUT_S = 5.0
# Why the relay ends a session by itself (the outcome logged; `LineSession._goodbye` words it).
LOGIN_TIMEOUT = "login timeout"
IDLE_TIMEOUT = "idle timeout"
TOO_MANY_COMMANDS = "too many commands without progress"


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


class ClientGone(Exception):
    """The client disconnected, or stopped reading or sending for longer than a timeout."""


@dataclass
class LineContext:
    """What a session needs from its listener (all shared, read-only)."""

    listener: ListenerConfig
    limits: LimitsConfig
    tokens: TokenSource
    authenticator: LocalAuthenticator
    tls_context: ssl.SSLContext | None  # the listener's context (implicit TLS or STARTTLS)
    observer: RelayObserver = field(default=NULL_OBSERVER)  # relay.metrics


class Upstream(Protocol):
    """A logged-in upstream connection, as far as the session's teardown is concerned."""

    async def close(self) -> None:
        """End the upstream session (POP3: without QUIT, so nothing is deleted)."""


CoreT = TypeVar("CoreT", bound=LineCore)
UpstreamT = TypeVar("UpstreamT", bound=Upstream)


class LineSession(abc.ABC, Generic[CoreT, UpstreamT]):
    """Runs one client connection from greeting to close (see the module docstring)."""

    protocol: ClassVar[str]  # "pop3" / "imap": metrics label, log prefix, accounts.NAME.<protocol>
    log: ClassVar[logging.Logger]
    closing_outcome: ClassVar[str]  # the outcome when the core closes the session (QUIT/LOGOUT)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: LineContext, session_id: str) -> None:
        self._reader = reader
        self._writer = writer
        self._ctx = ctx
        self.session_id = session_id
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_ip = str(peer[0])
        self.client = f"{peer[0]}:{peer[1]}"
        self.stats = SessionStats()
        self._upstream: UpstreamT | None = None
        self._handed_over = False  # the transports belong to someone else (IMAP's splice)
        self._budget = CommandBudget(ctx.limits.max_commands_without_progress)
        self._login_deadline: float | None = asyncio.get_running_loop().time() + ctx.limits.login_timeout_s
        self._line_deadline: float | None = None  # when the line being read must be complete
        self._read_timer: LazyDeadline | None = None  # times each read (see _read)
        tls_active = writer.get_extra_info("sslcontext") is not None
        self._core: CoreT = self._new_core(
            starttls_available=ctx.listener.tls == "starttls" and ctx.tls_context is not None,
            tls_active=tls_active, plaintext_allowed=self._plaintext_allowed(tls_active))

    # --- what a protocol says ------------------------------------------------------------------

    @abc.abstractmethod
    def _new_core(self, *, starttls_available: bool, tls_active: bool, plaintext_allowed: bool) -> CoreT:
        """The pure protocol core for this connection."""

    @abc.abstractmethod
    def _greeting(self) -> bytes:
        """The first line the client reads."""

    @property
    @abc.abstractmethod
    def _idle_timeout_s(self) -> float:
        """How long one command line (or one write) may take."""

    @abc.abstractmethod
    def _goodbye(self, why: str) -> bytes:
        """The last words before the relay closes; ``why`` is LOGIN_TIMEOUT, IDLE_TIMEOUT or
        TOO_MANY_COMMANDS."""

    @abc.abstractmethod
    def _wasted(self, reply: Reply) -> bool:
        """True when the core's ``reply`` answers a command that made no progress (budget)."""

    @abc.abstractmethod
    async def _on_event(self, event: object) -> bool:
        """Handle an event other than Reply/StartTls; False ends the session."""

    @abc.abstractmethod
    def _refusal(self, attempt: Credentials, refusal: Refusal, text: str) -> bytes:
        """``text`` as this protocol's refusal of the login ``attempt`` (with its response code)."""

    @abc.abstractmethod
    async def _open_upstream(self, account: AccountConfig, attempt: Credentials) -> bytes:
        """Log in upstream and set ``_upstream``; return the client's success reply. Raises the
        relay.errors tree (AuthorizationNeeded, UpstreamUnavailable, UpstreamAuthRejected ...)."""

    @abc.abstractmethod
    def _has_mailbox(self, account: AccountConfig) -> bool:
        """True when ``account`` has an upstream this protocol can log in to."""

    @abc.abstractmethod
    def _passed_through(self, attempt: Credentials, exc: UpstreamAuthRejected) -> bytes | None:
        """The upstream's own refusal for the client when it means "not now" (else None)."""

    @abc.abstractmethod
    def _access_hint(self, account: AccountConfig) -> str:
        """What must be enabled for ``account`` when the upstream refuses even a fresh token."""

    def _plaintext_allowed(self, tls_active: bool) -> bool:
        return self._ctx.authenticator.plaintext_auth_allowed(
            self._ctx.listener, self.client_ip, tls_active)

    # --- client I/O ----------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.stats.bytes_out += len(data)
        try:
            self._writer.write(data)
            # Drain (and arm its timer) only when the buffer is at its high-water mark or the
            # connection is closing (relay.drain): a timer per reply and per chunk is measurable.
            # asyncio.timeout, not wait_for: wait_for wraps the coroutine in a new Task per call.
            if needs_drain(self._writer):
                async with asyncio.timeout(self._idle_timeout_s):
                    await self._writer.drain()
        except (OSError, TimeoutError) as exc:
            raise ClientGone(f"client write failed: {exc or 'timeout'}") from None

    async def _read(self) -> bytes:
        """More of the current command line, within the line's idle deadline and the login deadline."""
        loop = asyncio.get_running_loop()
        if self._line_deadline is None:
            self._line_deadline = loop.time() + self._idle_timeout_s
        deadline = self._line_deadline
        if self._login_deadline is not None:
            deadline = min(deadline, self._login_deadline)
        # A LazyDeadline, not asyncio.timeout_at (a timer armed and cancelled per read): on
        # expiry the pending read fails with TimeoutError.
        timer = self._read_timer
        if timer is None:
            timer = self._read_timer = LazyDeadline(loop, self._read_timed_out)
        timer.set(deadline - loop.time())
        try:
            data = await self._reader.read(CLIENT_READ_BYTES)
        except TimeoutError:
            login_late = self._login_deadline is not None and deadline == self._login_deadline
            await self._say_goodbye(LOGIN_TIMEOUT if login_late else IDLE_TIMEOUT)
        except OSError as exc:
            raise ClientGone(f"client read failed: {exc}") from None
        finally:
            timer.clear()
        if not data:
            raise ClientGone("client disconnected")
        self.stats.bytes_in += len(data)
        return data

    def _read_timed_out(self) -> None:
        self._reader.set_exception(TimeoutError())

    async def _say_goodbye(self, why: str) -> NoReturn:
        """Tell the client why the relay closes (if it still listens), then end the session."""
        self.stats.outcome = why
        with contextlib.suppress(ClientGone):
            await self._write(self._goodbye(why))
        raise ClientGone(why) from None

    async def _spend(self) -> None:
        """Count a command without progress; over the budget, say so and close."""
        if not self._budget.spend():
            await self._say_goodbye(TOO_MANY_COMMANDS)

    # --- the session ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the client leaves, a limit or an error ends it; log one line."""
        self._ctx.observer.session_started(self.protocol)
        try:
            await self._write(self._greeting())
            await self._serve()
        except ClientGone as exc:
            if self.stats.outcome == "closed":
                self.stats.outcome = str(exc)
        except asyncio.CancelledError:
            self.stats.outcome = "shutdown"
            raise
        except (RelayError, OSError) as exc:
            self.stats.outcome = f"error: {exc}"
            self.log.warning("%s session %s: %s", self.protocol, self.session_id, exc)
        finally:
            await self._close()

    async def _serve(self) -> None:
        core = self._core
        while True:
            event = core.next_event()
            if event is NEED_DATA:
                core.receive_data(await self._read())
                continue
            if event is PAUSED:  # only reachable if a decision was not made: a bug
                raise RuntimeError(f"{self.protocol} protocol paused without a pending decision")
            self._line_deadline = None  # a command is complete: the next one gets its own time
            self.stats.commands += 1
            if isinstance(event, Reply):
                if self._wasted(event) and not event.close:
                    await self._spend()
                await self._write(event.data)
                if event.close:
                    self.stats.outcome = self.closing_outcome
                    return
            elif isinstance(event, StartTls):
                await self._start_tls(event)
            elif not await self._on_event(event):
                return

    async def _start_tls(self, event: StartTls) -> None:
        assert self._ctx.tls_context is not None
        # Stop reading before the OK: the client's ClientHello must reach the TLS layer, not the
        # clear-text stream buffer. Whatever already sits in that buffer came before the OK, so it
        # is clear text pipelined behind STARTTLS/STLS and is dropped (RFC 2595 section 4, RFC 9051
        # 11.1). asyncio offers no public way to empty a StreamReader, hence the private attribute.
        self._writer.transport.pause_reading()  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        await self._write(event.reply)
        try:
            await asyncio.wait_for(self._writer.start_tls(self._ctx.tls_context), self._idle_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ClientGone(f"TLS handshake failed: {exc or 'timeout'}") from None
        self._core.tls_started(plaintext_allowed=self._plaintext_allowed(True))

    # --- login ---------------------------------------------------------------------------------

    async def _login(self, attempt: Credentials) -> bool:
        """Check ``attempt`` locally, then log in upstream; answer the client. True when logged in."""
        account = await self._ctx.authenticator.authenticate(
            attempt.username, attempt.password.reveal(), self.client_ip)
        if account is None:
            self._ctx.observer.local_auth_failed(self.protocol)
            self.stats.result = "auth_failed"
            self._core.login_failed()
            await self._write(self._refuse(attempt, Refusal.INVALID_CREDENTIALS, None))
            return False
        self.stats.result = "ok"
        self.stats.account = account.name
        reply = await self._upstream_login(account, attempt)
        if self._upstream is None:
            self._core.login_failed()
        else:
            self._core.login_succeeded()
            self._login_deadline = None
            self._budget.progress()
        await self._write(reply)
        return self._upstream is not None

    def _refuse(self, attempt: Credentials, refusal: Refusal, account: AccountConfig | None) -> bytes:
        return self._refusal(attempt, refusal, refusal.text(account, self.protocol))

    async def _upstream_login(self, account: AccountConfig, attempt: Credentials) -> bytes:
        """Log in upstream; the reply for the client (``_upstream`` is set on success)."""
        if not self._has_mailbox(account):
            self.log.warning("%s login for account '%s' refused: the account has no %s upstream "
                             "(set accounts.%s.%s)", self.protocol, account.name, self.protocol,
                             account.name, self.protocol)
            return self._refuse(attempt, Refusal.NO_MAILBOX, account)
        observer, started = self._ctx.observer, time.monotonic()
        try:
            reply = await self._open_upstream(account, attempt)
            observer.upstream_login(account.name, self.protocol, time.monotonic() - started, 200)
        except UpstreamAuthRejected as exc:
            observer.upstream_login(account.name, self.protocol, time.monotonic() - started, 535)
            passed = self._passed_through(attempt, exc)
            if passed is not None:
                self._log_login_failure(account, exc, "the upstream mailbox refused the session")
                return passed
            self._log_login_failure(account, exc, token_rejected_fix(account, self._access_hint(account)))
            return self._refuse(attempt, Refusal.REJECTED, account)
        except RelayError as exc:
            failure = classify(exc, account, self.protocol)
            self._log_login_failure(account, exc, failure.fix)
            return self._refuse(attempt, failure.refusal, account)
        except Exception:  # a bug: the client still gets an answer it can retry on
            self.log.exception("%s session %s: unexpected error logging in upstream for account '%s'",
                               self.protocol, self.session_id, account.name)
            return self._refuse(attempt, Refusal.LOCAL_ERROR, account)
        return reply

    def _log_login_failure(self, account: AccountConfig, exc: Exception, fix: str) -> None:
        provider_error = getattr(exc, "provider_error", None)
        detail = f" (provider error: {provider_error})" if provider_error else ""
        explanation = (f"upstream login for account '{account.name}' ({account.mailbox}) failed: "
                       f"{exc}{detail}; fix: {fix}")
        self.stats.result = "upstream_error"
        self._ctx.observer.upstream_failure(account.name, self.protocol, explanation)
        reply = getattr(exc, "reply", None)  # an UpstreamReply value, when the upstream answered
        self.log.warning("%s session %s: %s", self.protocol, self.session_id, explanation,
                         extra={"account": account.name, "session": self.session_id,
                                "client": self.client, "protocol": self.protocol,
                                "outcome": "upstream_error", "upstream_reply": str(reply or "") or None})
        log_explanation(account.name, account.mailbox, reply.one_line() if reply else str(exc))

    # --- close: the one teardown ---------------------------------------------------------------

    async def _close(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()  # its callback must not keep the session alive
        if self._upstream is not None:
            await self._upstream.close()  # POP3: without QUIT unless quit() already ran
        if not self._handed_over:
            try:
                self._writer.close()
                await asyncio.wait_for(self._writer.wait_closed(), CLOSE_TIMEOUT_S)
            except (OSError, TimeoutError):
                self._writer.transport.abort()
        s = self.stats
        self._ctx.observer.session_ended(self.protocol, s.account if s.account != "-" else None, s.result)
        self.log.info("%s session %s ended: account=%s client=%s commands=%d bytes_in=%d "
                      "bytes_out=%d outcome=%s", self.protocol, self.session_id, s.account,
                      self.client, s.commands, s.bytes_in, s.bytes_out, s.outcome,
                      extra={"account": s.account, "session": self.session_id, "client": self.client,
                             "protocol": self.protocol, "outcome": s.result, "detail": s.outcome,
                             "upstream_reply": s.upstream_reply,
                             "duration_ms": round((time.monotonic() - s.started) * 1000),
                             "bytes": s.bytes_out, "bytes_in": s.bytes_in})

"""One proxied POP3 connection: `Pop3Protocol` in a `relay.lineproto.session.LineSession`.

The base runs the loop, limits, STLS, login and teardown; this module adds what is POP3's: the
reply words and codes (RFC 2449/3206), and TRANSACTION, where each command goes to the account's
`relay.pop3.mailbox.Pop3Mailbox` and multi-line replies stream through chunk by chunk with
``drain`` between chunks (a slow client slows the upstream read, never fills memory). Safety
rules for the mailbox:

* QUIT upstream is sent only for the client's QUIT in TRANSACTION; a disconnect, idle timeout,
  error or shutdown closes the upstream without QUIT, so the upstream applies no deletions.
* If the upstream fails in the middle of a multi-line reply, the client connection is closed
  without the terminating ".", so a truncated message is never taken as complete.
"""

from __future__ import annotations

import asyncio
import logging

from relay.config.model import AccountConfig
from relay.errors import UpstreamAuthRejected, UpstreamError
from relay.lineproto.events import Credentials
from relay.lineproto.login import Refusal
from relay.lineproto.session import (
    IDLE_TIMEOUT,
    LOGIN_TIMEOUT,
    TOO_MANY_COMMANDS,
    ClientGone,
    LineContext,
    LineSession,
)
from relay.pop3.mailbox import MailboxOpener, Pop3Mailbox
from relay.pop3.protocol import LoginAttempt, Pop3Protocol, Reply, UpstreamCommand
from relay.pop3.replies import err, ok
from relay.pop3.upstream import open_upstream

_PASSED_THROUGH_CODES = frozenset({"IN-USE", "LOGIN-DELAY", "SYS/PERM"})
_WASTED_COMMANDS = frozenset({"NOOP", "RSET"})  # forwarded, but no progress (relay.sessionlimits)
_PROGRESS_COMMANDS = frozenset({"RETR", "TOP", "DELE"})
_GOODBYES = {LOGIN_TIMEOUT: "Login timeout", IDLE_TIMEOUT: "Disconnected for inactivity",
             TOO_MANY_COMMANDS: "Too many commands without progress; closing"}
_REFUSAL_CODES = {Refusal.INVALID_CREDENTIALS: "AUTH", Refusal.NO_MAILBOX: "SYS/PERM",
                  Refusal.REAUTHORIZE: "AUTH", Refusal.REJECTED: "AUTH"}  # the rest: SYS/TEMP


class Pop3ProxySession(LineSession[Pop3Protocol, Pop3Mailbox]):
    """Runs one client connection from greeting to close."""

    protocol = "pop3"
    log = logging.getLogger("relay.pop3")
    closing_outcome = "quit"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: LineContext, session_id: str, *, open_mailbox: MailboxOpener = open_upstream) -> None:
        super().__init__(reader, writer, ctx, session_id)
        self._open_mailbox = open_mailbox  # relay.pop3.mailbox: upstream POP3 or Graph

    def _new_core(self, *, starttls_available: bool, tls_active: bool,
                  plaintext_allowed: bool) -> Pop3Protocol:
        return Pop3Protocol(stls_available=starttls_available, tls_active=tls_active,
                            plaintext_allowed=plaintext_allowed, bare_lf=self._ctx.listener.bare_lf)

    def _greeting(self) -> bytes:
        return ok("POP3 relay ready")

    @property
    def _idle_timeout_s(self) -> float:
        return self._ctx.limits.pop3_idle_timeout_s

    def _goodbye(self, why: str) -> bytes:
        return err(_GOODBYES[why], "SYS/TEMP")

    def _wasted(self, reply: Reply) -> bool:
        return reply.data.startswith(b"-ERR")

    async def _on_event(self, event: object) -> bool:
        if isinstance(event, LoginAttempt):
            await self._login(event)
        elif isinstance(event, UpstreamCommand):
            if event.keyword in _WASTED_COMMANDS:
                await self._spend()
            elif event.keyword in _PROGRESS_COMMANDS:
                self._budget.progress()
            await self._forward(event)
            return not event.quit
        return True

    # --- login ---------------------------------------------------------------------------------

    def _refusal(self, attempt: Credentials, refusal: Refusal, text: str) -> bytes:
        return err(text, _REFUSAL_CODES.get(refusal, "SYS/TEMP"))

    def _has_mailbox(self, account: AccountConfig) -> bool:
        return account.can_read

    async def _open_upstream(self, account: AccountConfig, attempt: Credentials) -> bytes:
        self._upstream, status = await self._open_mailbox(account, self._ctx.tokens, self._ctx.limits)
        self._core.set_upstream_capabilities(self._upstream.capabilities)
        return status.raw

    def _passed_through(self, attempt: Credentials, exc: UpstreamAuthRejected) -> bytes | None:
        if exc.reply is not None and exc.reply.enhanced_code in _PASSED_THROUGH_CODES:
            return f"-ERR {exc.reply.text}\r\n".encode()
        return None

    def _access_hint(self, account: AccountConfig) -> str:
        return f"POP access is enabled for {account.mailbox} and the app has POP permission"

    # --- TRANSACTION ---------------------------------------------------------------------------

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
                self.log.exception("pop3 session %s: unexpected upstream error", self.session_id)
            self.stats.outcome = f"upstream failed: {exc}"
            await self._write(err("Upstream mail server connection lost", "SYS/TEMP"))
            raise ClientGone(self.stats.outcome) from None
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
            raise ClientGone(self.stats.outcome) from None


def _status_line(raw: bytes) -> str:
    """The first line of a POP3 status, for the session log line (never a body; at most 200 chars)."""
    return raw.split(b"\r\n", 1)[0][:200].decode("utf-8", "replace")

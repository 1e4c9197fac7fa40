"""One proxied IMAP connection: `ImapProtocol` in a `relay.lineproto.session.LineSession`, then a
byte relay.

Before login the relay answers by itself (relay/imap/protocol.py); the base runs that loop, its
limits, STARTTLS, the login and the teardown. The login command is checked against the local
users, then the account's upstream is logged in with XOAUTH2; the client's tagged reply comes from
that result, carrying the upstream's post-login capabilities. From then on bytes flow unchanged
both ways (IDLE, literals, FETCH of any size) through `Splice` (relay/imap/splice.py): the two
transports feed each other directly, and a write buffer above its high-water mark pauses reading
on the other side, so a slow reader slows the sender down instead of filling memory. The session
ends when either side closes, or after ``limits.imap_idle_timeout_s`` without a byte in either
direction (RFC 9051 5.4: at least 30 minutes; IDLE clients re-issue IDLE every 29 minutes, RFC 2177).
"""

from __future__ import annotations

import asyncio
import logging

from relay.config.model import AccountConfig
from relay.errors import UpstreamAuthRejected
from relay.imap.protocol import ImapProtocol, LoginAttempt, Reply
from relay.imap.splice import Splice
from relay.imap.syntax import tagged, untagged
from relay.imap.upstream import UpstreamImapSession, client_capabilities, open_upstream
from relay.lineproto.events import Credentials
from relay.lineproto.login import Refusal
from relay.lineproto.session import IDLE_TIMEOUT, LOGIN_TIMEOUT, TOO_MANY_COMMANDS, LineSession

PRE_LOGIN_TIMEOUT_CAP_S = 300.0  # RFC 9051 5.4 allows a shorter timer before login
HALF_CLOSE_GRACE_S = 10.0  # after the client's EOF, time for the upstream's last replies
AUTOLOGOUT = "BYE Autologout; idle for too long"
# Upstream NO codes passed on to the client as they are (RFC 5530): they mean "not now".
_PASSED_THROUGH_CODES = ("[UNAVAILABLE]", "[INUSE]", "[LIMIT]")
_GOODBYES = {LOGIN_TIMEOUT: "BYE Autologout; no login in time", IDLE_TIMEOUT: AUTOLOGOUT,
             TOO_MANY_COMMANDS: "BYE Too many commands without progress; closing"}
_REFUSAL_CODES = {Refusal.INVALID_CREDENTIALS: "AUTHENTICATIONFAILED", Refusal.NO_MAILBOX: "CONTACTADMIN",
                  Refusal.REAUTHORIZE: "CONTACTADMIN", Refusal.REJECTED: "CONTACTADMIN"}  # else UNAVAILABLE


class ImapProxySession(LineSession[ImapProtocol, UpstreamImapSession]):
    """Runs one client connection from greeting to close."""

    protocol = "imap"
    log = logging.getLogger("relay.imap")
    closing_outcome = "logout"

    def _new_core(self, *, starttls_available: bool, tls_active: bool,
                  plaintext_allowed: bool) -> ImapProtocol:
        return ImapProtocol(starttls_available=starttls_available, tls_active=tls_active,
                            plaintext_allowed=plaintext_allowed)

    def _greeting(self) -> bytes:
        return self._core.greeting()

    @property
    def _idle_timeout_s(self) -> float:
        """Before login (the splice has its own timer afterwards)."""
        return min(self._ctx.limits.imap_idle_timeout_s, PRE_LOGIN_TIMEOUT_CAP_S)

    def _goodbye(self, why: str) -> bytes:
        return untagged(_GOODBYES[why])

    def _wasted(self, reply: Reply) -> bool:
        return is_wasted_reply(reply.data)

    async def _on_event(self, event: object) -> bool:
        """A login attempt; once it succeeds the session relays bytes until it ends (False)."""
        if isinstance(event, LoginAttempt) and await self._login(event):
            await self._relay()
            return False
        return True

    # --- login ---------------------------------------------------------------------------------

    def _refusal(self, attempt: Credentials, refusal: Refusal, text: str) -> bytes:
        assert isinstance(attempt, LoginAttempt)
        return tagged(attempt.tag, "NO", text, _REFUSAL_CODES.get(refusal, "UNAVAILABLE"))

    def _has_mailbox(self, account: AccountConfig) -> bool:
        return account.imap is not None

    async def _open_upstream(self, account: AccountConfig, attempt: Credentials) -> bytes:
        assert isinstance(attempt, LoginAttempt)
        self._upstream, _ok = await open_upstream(account, self._ctx.tokens, self._ctx.limits)
        caps = client_capabilities(self._upstream.capabilities)
        return tagged(attempt.tag, "OK", "Logged in", f"CAPABILITY {caps}")

    def _passed_through(self, attempt: Credentials, exc: UpstreamAuthRejected) -> bytes | None:
        assert isinstance(attempt, LoginAttempt)
        upstream_text = exc.reply.text if exc.reply else ""
        if upstream_text.upper().startswith(_PASSED_THROUGH_CODES):
            return attempt.tag + b" NO " + upstream_text.encode() + b"\r\n"
        return None

    def _access_hint(self, account: AccountConfig) -> str:
        return (f"IMAP is enabled for {account.mailbox}, the app has the IMAP permission "
                f"(IMAP.AccessAsUser.All / IMAP.AccessAsApp, or https://mail.google.com/)")

    # --- after login: the byte relay -----------------------------------------------------------

    async def _relay(self) -> None:
        """Splice client and upstream until either ends or the session idles out."""
        upstream = self._upstream
        assert upstream is not None
        # Bytes already read past the login on each side go first. The stream readers are not
        # used again (the splice takes the transports over), so their buffers are emptied here;
        # asyncio has no public way to do that, as in the STARTTLS code of the base.
        to_upstream = self._core.take_buffered() + _drain_reader(self._reader)
        to_client = upstream.take_buffered() + _drain_reader(upstream.reader)
        upstream.closed = True  # from now on the splice closes the connection
        self._handed_over = True  # and the client's: the base's teardown leaves it alone
        splice = Splice(self._writer.transport, upstream.writer.transport,
                        idle_timeout_s=self._ctx.limits.imap_idle_timeout_s,
                        grace_s=HALF_CLOSE_GRACE_S, idle_goodbye=untagged(AUTOLOGOUT))
        try:
            how = await splice.run(to_upstream, to_client)
        finally:
            self.stats.bytes_in += splice.stats.to_upstream
            self.stats.bytes_out += splice.stats.to_client
        self.stats.outcome = how


def is_wasted_reply(data: bytes) -> bool:
    """True for a local answer that made no progress: a NOOP, or a command refused (NO/BAD)."""
    last = data.rstrip(b"\r\n").rpartition(b"\r\n")[2]
    words = last.split(b" ", 3)
    return len(words) >= 3 and (words[1] in (b"NO", b"BAD") or words[1:3] == [b"OK", b"NOOP"])


def _drain_reader(reader: asyncio.StreamReader) -> bytes:
    """Take whatever a StreamReader has buffered (it is not read again after this)."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    data = bytes(buffer)
    buffer.clear()
    return data

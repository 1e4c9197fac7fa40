"""How the spool's worker sends a finished message: one small interface, one SMTP implementation.

The worker never talks SMTP itself: it asks the account's `MessageSender` to send the envelope and
content and gets a `SendResult` (who was accepted, who was refused and why). `SmtpMessageSender`
is live SMTP with XOAUTH2 (through `relay.smtp.upstream.open_logged_in`); accounts with
``send_via: graph`` get `relay.spool.graph_sender.GraphMessageSender` from the service's factory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relay.config.model import AccountConfig, LimitsConfig
from relay.smtp.bdat import CHUNK_BYTES, send_last_chunk
from relay.smtp.commandline import mail_command, rcpt_command
from relay.smtp.reply import SmtpReply
from relay.smtp.upstream import UpstreamSmtpSession, open_logged_in
from relay.spool.crashpoints import crash_point
from relay.spool.entry import Envelope
from relay.spool.schedule import is_throttling
from relay.tokens.source import TokenSource

_STUFF = re.compile(rb"(?m)^\.")
WRITE_BYTES = 256 * 1024


@dataclass(frozen=True)
class SendResult:
    """The upstream's verdict on one attempt.

    ``accepted``: recipients the message was delivered to. ``refused``: recipients refused at RCPT
    (their reply). ``reply``: a refusal of the whole message (MAIL, DATA or the final reply),
    which applies to every recipient not in ``refused``; None when the message went through.
    ``retry_after_s``: how long the upstream asked us to wait when it throttled (Graph's
    ``Retry-After``), for the account's backoff."""

    accepted: tuple[str, ...] = ()
    refused: Mapping[str, SmtpReply] = field(default_factory=dict)
    reply: SmtpReply | None = None
    retry_after_s: float | None = None


def _throttled(result: SendResult) -> bool:
    replies = [*result.refused.values(), *([result.reply] if result.reply is not None else [])]
    return any(is_throttling(reply) for reply in replies)


class MessageSender(Protocol):
    """Sends finished messages for one account."""

    async def send(self, envelope: Envelope, recipients: Sequence[str], content: bytes) -> SendResult:
        """Send ``content`` to ``recipients``; raise `relay.errors.RelayError`/OSError when the
        upstream cannot be reached or logged into (the attempt said nothing about the message)."""
        ...

    async def close(self) -> None:
        """Release connections (the worker calls it when the account's queue is empty, and at stop)."""
        ...


class SmtpMessageSender:
    """Live SMTP with XOAUTH2; logged-in sessions are kept for the next message (RSET between)."""

    def __init__(self, account: AccountConfig, tokens: TokenSource, limits: LimitsConfig,
                 hostname: str) -> None:
        self.account = account
        self.tokens = tokens
        self.limits = limits
        self.hostname = hostname
        self._idle: list[UpstreamSmtpSession] = []

    async def send(self, envelope: Envelope, recipients: Sequence[str], content: bytes) -> SendResult:
        """One transaction; a session in an unknown state afterwards is closed, never reused."""
        up = await self._session()
        try:
            result = await self._transaction(up, envelope, recipients, content)
        except BaseException:
            up.abort()
            raise
        if _throttled(result):
            # Exchange counts logged-in sessions per mailbox (432 4.3.2 above 3): keeping ours open
            # through the backoff would keep the mailbox over its limit. Close them all.
            await up.quit()
            await self.close()
        elif up.connected:
            self._idle.append(up)
        return result

    async def _session(self) -> UpstreamSmtpSession:
        while self._idle:
            up = self._idle.pop()
            if up.connected and up.looks_idle:
                return up
            up.abort()
        up, _ = await open_logged_in(self.account, self.tokens, self.limits, hostname=self.hostname)
        return up

    async def _transaction(self, up: UpstreamSmtpSession, envelope: Envelope,
                           recipients: Sequence[str], content: bytes) -> SendResult:
        """MAIL, RCPTs, content: with PIPELINING MAIL and all RCPTs in one write, and with
        CHUNKING a message up to `CHUNK_BYTES` as one ``BDAT LAST`` (2 round trips); else DATA."""
        mail = mail_command(envelope.sender, self._params(up, envelope, content))
        if up.pipelining and recipients:
            # MAIL and every RCPT in one write (RFC 2920); the replies come back in order.
            mail_reply, first = await up.mail_rcpt(mail, b"".join(rcpt_command(r) for r in recipients))
            if not mail_reply.is_positive:
                up.abort()  # replies to the pipelined RCPTs may still be on the way: not reusable
                return SendResult(reply=mail_reply)
            assert first is not None
            replies = [first, *[await up.read_reply("RCPT") for _ in recipients[1:]]]
        else:
            mail_reply = await up.send_command(mail, "MAIL")
            if not mail_reply.is_positive:
                await self._rset(up)
                return SendResult(reply=mail_reply)
            replies = [await up.send_command(rcpt_command(r), "RCPT") for r in recipients]
        accepted = [r for r, reply in zip(recipients, replies, strict=True) if reply.is_positive]
        refused = {r: reply for r, reply in zip(recipients, replies, strict=True) if not reply.is_positive}
        if not accepted:
            await self._rset(up)
            return SendResult(refused=refused)
        final = await self._content(up, content)
        if not final.is_positive:
            await self._rset(up)  # a refused BDAT leaves the transaction open
            return SendResult(refused=refused, reply=final)
        return SendResult(accepted=tuple(accepted), refused=refused)

    @staticmethod
    async def _content(up: UpstreamSmtpSession, content: bytes) -> SmtpReply:
        """The content and the upstream's final reply (or its refusal of DATA)."""
        if up.chunking and len(content) <= CHUNK_BYTES:
            crash_point("upstream_data")
            return await send_last_chunk(up, [content])
        go_ahead = await up.data_start()
        if go_ahead.code != 354:
            return go_ahead
        stuffed = _STUFF.sub(b"..", content)
        for start in range(0, len(stuffed), WRITE_BYTES):
            await up.data_write(stuffed[start:start + WRITE_BYTES])
        crash_point("upstream_data")
        return await up.data_finish()

    @staticmethod
    def _params(up: UpstreamSmtpSession, envelope: Envelope, content: bytes) -> list[str]:
        caps = up.capabilities
        params = []
        if caps.size is not None:
            params.append(f"SIZE={len(content)}")
        body = envelope.mail_options.get("BODY")
        if body and caps.eight_bit_mime:
            params.append(f"BODY={body}")
        if "SMTPUTF8" in envelope.mail_options and caps.smtputf8:
            params.append("SMTPUTF8")
        return params

    @staticmethod
    async def _rset(up: UpstreamSmtpSession) -> None:
        """End a refused transaction so the session can be kept (a closed one is left closed)."""
        if not up.connected:
            return
        reply = await up.rset()
        if not reply.is_positive:
            up.abort()

    async def close(self) -> None:
        """QUIT the kept sessions."""
        idle, self._idle = self._idle, []
        for up in idle:
            await up.quit()

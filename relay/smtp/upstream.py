"""One upstream SMTP session: connect, (STARTTLS|implicit TLS), EHLO, AUTH XOAUTH2, transactions.

Why hand-written over asyncio streams instead of aiosmtplib (whose helpers we admire):

* byte-exact DATA: aiosmtplib's ``data()`` rewrites lone CR/LF to CRLF and wants the whole
  message in memory; the relay streams the client's already dot-stuffed wire bytes through
  unchanged, chunk by chunk, and must be able to abandon a transaction without the final dot;
* XOAUTH2: aiosmtplib sends the token as an initial response on the AUTH line (over RFC 4954's
  512 octets for real tokens); we use the two-step form Microsoft documents and handle both
  failure shapes (334 + base64 JSON, then an empty line -> 535; or 535 directly).

Every OSError, ssl error, timeout or dropped connection becomes `UpstreamUnavailable`; a refused
login `UpstreamAuthRejected` carrying the upstream's reply text.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from relay.config.model import AccountConfig, LimitsConfig, UpstreamEndpoint
from relay.drain import write_now
from relay.errors import ProtocolInputError, UpstreamProtocolError, UpstreamUnavailable
from relay.lazytimer import LazyDeadline
from relay.secret import Secret
from relay.smtp.commandline import command_line, mail_command, rcpt_command
from relay.smtp.reply import EhloCapabilities, ReplyParser, SmtpReply
from relay.smtp.xoauth2 import authenticate_xoauth2
from relay.tokens.source import TokenSource
from relay.upstream.login import login_with_refresh
from relay.upstream.reader import LeanStreamReader
from relay.upstream.stream import open_stream, start_tls, translate_failure

T = TypeVar("T")

_STUFF = re.compile(rb"(?m)^\.")
READ_LIMIT = 64 * 1024


class UpstreamSmtpSession:
    """A client session with one upstream SMTP server for one account.

    Use: ``await connect()``, ``await authenticate(mailbox, token)``, then per message ``mail``
    (or ``mail_rcpt``, pipelined), ``rcpt``..., then ``data_start``, ``data_write``...,
    ``data_finish`` (or one BDAT LAST chunk: `relay.smtp.bdat.send_last_chunk`); ``quit()`` or
    ``abort()``.
    """

    def __init__(self, endpoint: UpstreamEndpoint, *, account: str, local_hostname: str = "localhost",
                 connect_timeout_s: float = 30.0, command_timeout_s: float = 120.0,
                 data_timeout_s: float = 600.0) -> None:
        self.endpoint = endpoint
        self.account = account
        self.local_hostname = local_hostname
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.data_timeout_s = data_timeout_s
        self.capabilities = EhloCapabilities()
        self.last_reply: SmtpReply | None = None
        self._reader: LeanStreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = ReplyParser()
        self._needs_crlf = False  # DATA content so far does not end with CRLF
        self.on_close: Callable[[], None] | None = None  # called once when closed (frees its slot)
        self._deadline: LazyDeadline | None = None  # the running step's timeout (see _guard)
        self._timed_out = False  # the last step was ended by its timeout

    # --- connection ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the connection is open (it may still turn out dead at the next command)."""
        return self._writer is not None and not self._writer.is_closing()

    @property
    def looks_idle(self) -> bool:
        """True when nothing arrived since the last reply: no EOF and no unsolicited reply (like a
        ``421`` idle timeout) buffered. A cheap check, without a round trip, before reusing."""
        reader = self._reader
        # StreamReader has no public "bytes buffered" accessor; _buffer is stable since 3.4.
        return reader is not None and not reader.at_eof() and not reader._buffer

    @property
    def pipelining(self) -> bool:
        """True when commands may be pipelined (RFC 2920): the upstream offered PIPELINING and the
        endpoint's ``pipelining`` setting is on."""
        return self.endpoint.pipelining and self.capabilities.pipelining

    @property
    def chunking(self) -> bool:
        """True when content may go as BDAT chunks (RFC 3030): `pipelining` and CHUNKING offered."""
        return self.pipelining and self.capabilities.chunking

    @property
    def where(self) -> str:
        """host:port, for messages."""
        return f"{self.endpoint.host}:{self.endpoint.port}"

    async def connect(self) -> SmtpReply:
        """Open the connection, read the greeting, EHLO, upgrade to TLS, EHLO again."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                self._reader, self._writer = await open_stream(self.endpoint, read_limit=READ_LIMIT)
                greeting = await self.read_reply("greeting")
                if greeting.code != 220:
                    raise UpstreamUnavailable(
                        f"upstream {self.where} refused the session: {greeting}",
                        account=self.account, reply=greeting.as_upstream_reply())
                reply = await self._ehlo()
                if self.endpoint.tls == "starttls":
                    if not self.capabilities.starttls:
                        raise UpstreamUnavailable(
                            f"upstream {self.where} does not offer STARTTLS (smtp.tls: starttls)",
                            account=self.account)
                    await self._starttls()
                    reply = await self._ehlo()
        except BaseException as exc:
            self.abort()
            translated = self._translate(exc, "connect")
            if translated is exc:
                raise
            raise translated from exc
        return reply

    async def _ehlo(self) -> SmtpReply:
        reply = await self.command(f"EHLO {self.local_hostname}", "EHLO")
        if reply.code != 250:
            raise UpstreamUnavailable(f"upstream {self.where} refused EHLO: {reply}",
                                      account=self.account, reply=reply.as_upstream_reply())
        self.capabilities = EhloCapabilities.parse(reply)
        return reply

    async def _starttls(self) -> None:
        reply = await self.command("STARTTLS", "STARTTLS")
        if reply.code != 220:
            raise UpstreamUnavailable(f"upstream {self.where} refused STARTTLS: {reply}",
                                      account=self.account, reply=reply.as_upstream_reply())
        assert self._writer is not None
        await start_tls(self._writer, self.endpoint)

    async def quit(self) -> None:
        """Send QUIT (best effort) and close."""
        if self.connected:
            try:
                async with asyncio.timeout(min(self.command_timeout_s, 10.0)):
                    await self.command("QUIT", "QUIT")
            except (UpstreamUnavailable, UpstreamProtocolError, TimeoutError, OSError):
                pass  # closing anyway
        self.abort()

    def abort(self) -> None:
        """Close at once without QUIT; an open DATA transaction is abandoned (never delivered)."""
        writer, self._writer, self._reader = self._writer, None, None
        on_close, self.on_close = self.on_close, None
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            deadline.cancel()
        if on_close is not None:
            on_close()
        if writer is not None:
            transport = writer.transport
            # abort(), not close(): nothing buffered (like a final dot) may still go out.
            transport.abort()

    # --- authentication -----------------------------------------------------------------------

    async def authenticate(self, mailbox: str, token: Secret) -> SmtpReply:
        """AUTH XOAUTH2 in two steps; raise UpstreamAuthRejected with the upstream's reply."""
        return await authenticate_xoauth2(self, mailbox, token)

    # --- transaction --------------------------------------------------------------------------

    async def mail(self, address: str, params: Iterable[str] = ()) -> SmtpReply:
        """MAIL FROM:<address> [params]."""
        return await self.send_command(mail_command(address, params), "MAIL")

    async def rcpt(self, address: str) -> SmtpReply:
        """RCPT TO:<address>."""
        return await self.send_command(rcpt_command(address), "RCPT")

    async def send_command(self, line: bytes, what: str) -> SmtpReply:
        """Send checked command line(s) (`mail_command`, `rcpt_command`) in one write and read
        the (first) reply."""
        if self.write(line):  # a command line never fills the buffer; see relay.drain
            await self.drain(what, self.command_timeout_s)
        return await self.read_reply(what)

    async def mail_rcpt(self, mail: bytes, rcpt: bytes) -> tuple[SmtpReply, SmtpReply | None]:
        """MAIL and the first RCPT (checked lines): in one write when `pipelining`, else one after
        the other. Returns both replies; the RCPT's is None when MAIL was refused and no RCPT reply
        came (not sent, or the upstream closed after refusing MAIL: the session is then closed)."""
        if not self.pipelining:
            mail_reply = await self.send_command(mail, "MAIL")
            if not mail_reply.is_positive:
                return mail_reply, None
            return mail_reply, await self.send_command(rcpt, "RCPT")
        if self.write(mail + rcpt):
            await self.drain("MAIL", self.command_timeout_s)
        mail_reply = await self.read_reply("MAIL", lines=2)  # both replies after one wake-up
        try:
            rcpt_reply = await self.read_reply("RCPT")
        except (UpstreamUnavailable, UpstreamProtocolError):
            if mail_reply.is_positive:
                raise
            return mail_reply, None
        return mail_reply, rcpt_reply

    async def rset(self) -> SmtpReply:
        """RSET."""
        return await self.command("RSET", "RSET")

    async def noop(self) -> SmtpReply:
        """NOOP (a liveness check)."""
        return await self.command("NOOP", "NOOP")

    async def data_start(self) -> SmtpReply:
        """DATA; 354 means content may follow."""
        self.data_send()
        return await self.data_reply()

    def data_send(self) -> None:
        """Send DATA without waiting for its reply (read it with `data_reply`), so the relay can
        let its client start sending content during the upstream round trip."""
        self._needs_crlf = False
        self._require_writer().write(b"DATA\r\n")

    async def data_reply(self) -> SmtpReply:
        """The reply to `data_send`'s DATA; 354 means content may follow."""
        return await self.read_reply("DATA")

    async def data_write(self, wire_bytes: bytes) -> None:
        """Send already dot-stuffed content bytes (waits while the upstream is slower)."""
        if not wire_bytes:
            return
        self._needs_crlf = not wire_bytes.endswith(b"\r\n")
        await self.send_bytes(wire_bytes, "DATA content")

    async def send_bytes(self, data: bytes, what: str) -> None:
        """Write raw bytes (content, or a BDAT command with its chunk) without reading a reply;
        waits (up to the data timeout) only while the upstream is slower."""
        if self.write(data):
            await self.drain(what, self.data_timeout_s)

    def write(self, data: bytes) -> bool:
        """Write ``data`` now; True when the caller must then await `drain` (the buffer is full or
        the connection closing; see relay.drain): no coroutine per write otherwise."""
        return write_now(self._require_writer().transport, data)

    async def drain(self, what: str, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until the upstream took the buffered bytes."""
        await self._guard(self._require_writer().drain(), what, timeout_s)

    async def read_reply(self, what: str, timeout_s: float | None = None, lines: int = 1) -> SmtpReply:
        """Read the next reply (of a command sent earlier without waiting for it) under the step
        timeout (`_guard`'s rules, in one coroutine: this runs two or three times per message);
        ``lines``: first wait until that many lines (e.g. two pipelined replies) are buffered."""
        deadline = self._start_step(timeout_s)
        try:
            reader = self._reader
            if reader is None:
                raise UpstreamUnavailable(f"upstream {self.where} connection is closed", account=self.account)
            if lines > 1:
                await reader.wait_lines(lines)
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    raise UpstreamUnavailable(f"upstream {self.where} closed the connection",
                                              account=self.account) from None
                except asyncio.LimitOverrunError:
                    raise UpstreamProtocolError(f"upstream {self.where} sent an over-long reply line",
                                                account=self.account) from None
                reply = self._parser.feed_line(line)
                if reply is not None:
                    self.last_reply = reply
                    return reply
        except BaseException as exc:
            failure = self._step_failed(exc, what)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            deadline.clear()

    async def data_finish(self, tail: bytes = b"") -> SmtpReply:
        """Send ``tail`` (the last content bytes, may be empty) and the terminating dot in one
        write, and return the upstream's final reply."""
        writer = self._require_writer()
        if tail:
            self._needs_crlf = not tail.endswith(b"\r\n")
        # One write (one TLS record, one send) instead of two for a message's last chunk + dot.
        writer.write(tail + (b"\r\n.\r\n" if self._needs_crlf else b".\r\n"))
        return await self.read_reply("end of DATA", self.data_timeout_s)

    async def send_data(self, content: bytes) -> SmtpReply:
        """DATA for unstuffed content: dot-stuff it (line endings untouched) and send it."""
        reply = await self.data_start()
        if reply.code != 354:
            return reply
        await self.data_write(_STUFF.sub(b"..", content))
        return await self.data_finish()

    # --- plumbing -----------------------------------------------------------------------------

    def _require_writer(self) -> asyncio.StreamWriter:
        if self._writer is None:
            raise UpstreamUnavailable(f"upstream {self.where} connection is closed", account=self.account)
        return self._writer

    async def command(self, line: str, what: str, *, sensitive: bool = False) -> SmtpReply:
        """Send one command line (checked here) and read its reply under the step timeout."""
        return await self.send_command(command_line(line, sensitive=sensitive), what)

    async def _guard(self, step: Awaitable[T], what: str, timeout_s: float | None = None) -> T:
        """Run one step with a timeout; translate low-level failures and close on them.

        The timeout is the session's `LazyDeadline` (not ``asyncio.timeout``, which arms and
        cancels a timer per step): on expiry `_step_timed_out` aborts the connection, which ends
        the step's read or drain, and the failure is reported as the timeout it was."""
        deadline = self._start_step(timeout_s)
        try:
            return await step
        except BaseException as exc:
            failure = self._step_failed(exc, what)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            deadline.clear()

    def _start_step(self, timeout_s: float | None) -> LazyDeadline:
        """Time the step about to run (`_guard`); the caller clears the deadline after it."""
        deadline = self._deadline
        if deadline is None:
            deadline = self._deadline = LazyDeadline(asyncio.get_running_loop(), self._step_timed_out)
        self._timed_out = False
        deadline.set(timeout_s or self.command_timeout_s)
        return deadline

    def _step_failed(self, exc: BaseException, what: str) -> BaseException:
        """Close after a failed step and name the failure (``exc`` itself if it needs no
        translation). ProtocolInputError is our caller's input, refused before anything was sent:
        the session stays intact."""
        if isinstance(exc, ProtocolInputError):
            return exc
        self.abort()
        return self._translate(TimeoutError() if self._timed_out else exc, what)

    def _step_timed_out(self) -> None:
        """The step under `_guard` took too long: close the connection (the step then fails)."""
        self._timed_out = True
        self.abort()

    def _translate(self, exc: BaseException, what: str) -> BaseException:
        return translate_failure(exc, server=f"upstream {self.where}", step=what, account=self.account)


async def open_logged_in(account: AccountConfig, tokens: TokenSource, limits: LimitsConfig, *,
                         hostname: str = "localhost") -> tuple[UpstreamSmtpSession, Secret]:
    """A connected session logged in with the account's token (refreshed once if refused, see
    `relay.upstream.login.login_with_refresh`); returns it and the token it used."""
    endpoint = account.smtp
    assert endpoint is not None

    async def login(token: Secret) -> UpstreamSmtpSession:
        up = UpstreamSmtpSession(
            endpoint, account=account.name, local_hostname=hostname,
            connect_timeout_s=limits.upstream_connect_timeout_s,
            command_timeout_s=limits.upstream_command_timeout_s,
            data_timeout_s=limits.upstream_data_timeout_s)
        await up.connect()
        try:
            await up.authenticate(account.mailbox, token)
        except BaseException:
            up.abort()
            raise
        return up

    return await login_with_refresh(tokens, account.name, login)

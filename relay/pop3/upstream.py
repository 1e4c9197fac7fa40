"""Async client for an account's upstream POP3 server, logged in with SASL XOAUTH2.

`UpstreamPop3Session` has the shape of the SMTP client (`relay.smtp.upstream`): ``await
connect()`` (TLS on connect or STLS, verifying certificate and host name, through
`relay.upstream.stream`; greeting; CAPA), ``await authenticate(mailbox, token)`` (the two-step
``AUTH XOAUTH2`` of RFC 5034), then commands, ``quit()`` or ``close()``. `open_upstream` logs in
with `relay.upstream.login.connect_and_log_in`: a token the upstream rejects is refreshed once and
tried again on a fresh connection. Every low-level failure leaves this module as a `relay.errors`
exception: timeouts, OSError and TLS errors as `UpstreamUnavailable`, refusals as
`UpstreamAuthRejected` (carrying the upstream's reply as an `UpstreamReply`), garbage as
`UpstreamProtocolError`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

from relay.config.model import AccountConfig, LimitsConfig, UpstreamEndpoint
from relay.drain import needs_drain
from relay.errors import (
    UpstreamAuthRejected,
    UpstreamProtocolError,
    UpstreamReply,
    UpstreamUnavailable,
)
from relay.lazytimer import LazyDeadline
from relay.pop3.replies import MultilineEndScanner, StatusLine, parse_status
from relay.sasl import decode_error_challenge, encode_xoauth2
from relay.secret import Secret
from relay.tokens.source import TokenSource
from relay.upstream.login import TokenRejected, connect_and_log_in
from relay.upstream.stream import open_stream, start_tls, translate_failure
from relay.upstream_slots import loop_slots, pop3_slot_key

READ_CHUNK_BYTES = 64 * 1024
MAX_LINE_OCTETS = 8192  # status and CAPA lines; RFC 2449 allows 512, be lenient
_RESP_CODE = re.compile(r"^\[([A-Z/-]+)\]")
# -ERR codes (RFC 2449/3206) that say something other than "this token is bad".
_NOT_A_TOKEN_PROBLEM = frozenset({"IN-USE", "LOGIN-DELAY", "SYS/TEMP", "SYS/PERM"})


def _is_continuation(line: bytes) -> bool:
    """Tell a SASL ``+ [challenge]`` line from a ``+OK`` status line."""
    return line.startswith(b"+ ") or line.rstrip(b"\r\n") == b"+"


def response_code(text: str) -> str | None:
    """Return the RFC 2449 response code at the start of a reply text (``IN-USE``), if any."""
    match = _RESP_CODE.match(text)
    return match.group(1) if match else None


def error_reply(status: StatusLine) -> UpstreamReply:
    """A ``-ERR`` status line as the value carried by `relay.errors.UpstreamError`."""
    return UpstreamReply("-ERR", response_code(status.text), status.text)


class UpstreamPop3Session:
    """One connection to an upstream POP3 server for one account; after `connect` and
    `authenticate` it is in the TRANSACTION state."""

    def __init__(self, endpoint: UpstreamEndpoint, limits: LimitsConfig, *, account: str) -> None:
        self.endpoint = endpoint
        self.account = account
        self._limits = limits
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()
        self.capabilities: tuple[str, ...] | None = None  # None: the server has no CAPA
        self.closed = False
        self.on_close: Callable[[], None] | None = None  # called once when closed (frees its slot)
        self._deadline: LazyDeadline | None = None  # the running read's timeout (_read_chunk)

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.endpoint.host}:{self.endpoint.port}"

    # --- I/O primitives --------------------------------------------------------------------

    async def _read_chunk(self, timeout_s: float) -> bytes:
        reader = self._stream()[0]
        # A LazyDeadline, not asyncio.timeout (a timer armed and cancelled per read, several per
        # RETR): on expiry the read fails with TimeoutError (the stream is then unusable).
        deadline = self._deadline
        if deadline is None:
            deadline = self._deadline = LazyDeadline(asyncio.get_running_loop(), self._read_timed_out)
        deadline.set(timeout_s)
        try:
            data = await reader.read(READ_CHUNK_BYTES)
        except TimeoutError:
            raise UpstreamUnavailable(f"upstream POP3 server {self.where} did not answer within "
                                      f"{timeout_s:g} s", account=self.account) from None
        except OSError as exc:  # includes ssl.SSLError and ConnectionResetError
            raise self._translate(exc, "read") from None
        finally:
            deadline.clear()
        if not data:
            raise UpstreamUnavailable(f"upstream POP3 server {self.where} closed the connection",
                                      account=self.account)
        return data

    def _read_timed_out(self) -> None:
        if self._reader is not None:
            self._reader.set_exception(TimeoutError())

    def _stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            raise UpstreamUnavailable(f"upstream POP3 server {self.where} connection is closed",
                                      account=self.account)
        return self._reader, self._writer

    def _translate(self, exc: BaseException, step: str) -> BaseException:
        return translate_failure(exc, server=f"upstream POP3 server {self.where}", step=step,
                                 account=self.account)

    async def read_line(self) -> bytes:
        """Return the next line including its line end."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > MAX_LINE_OCTETS:
                raise UpstreamProtocolError(f"upstream POP3 server {self.where} sent an overlong line")
            self._buf += await self._read_chunk(self._limits.upstream_command_timeout_s)

    async def send(self, line: bytes) -> None:
        """Write one command line (with CRLF)."""
        writer = self._stream()[1]
        try:
            writer.write(line)
            # A command line never fills the buffer: skip the drain and its timer (relay.drain);
            # the reply read that follows has its own timeout.
            if needs_drain(writer):
                async with asyncio.timeout(self._limits.upstream_command_timeout_s):
                    await writer.drain()
        except (OSError, TimeoutError) as exc:
            raise self._translate(exc, "send") from None

    async def command(self, line: bytes) -> StatusLine:
        """Send a command and return its status line (a multi-line body is left to read)."""
        await self.send(line)
        return parse_status(await self.read_line())

    @property
    def has_buffered_data(self) -> bool:
        """True when bytes after the last status line are already read (``stream_body`` yields
        its first part without waiting for the network)."""
        return bool(self._buf)

    async def stream_body(self) -> AsyncIterator[bytes]:
        """Yield a multi-line body as wire bytes (dot-stuffed), ending with the terminator.

        Memory stays bounded by one read chunk; the caller's ``await`` between items is the
        backpressure. Raises UpstreamUnavailable if the body ends before its terminator.
        """
        scanner = MultilineEndScanner()
        while True:
            if self._buf:
                chunk = bytes(self._buf)
                self._buf.clear()
            else:
                chunk = await self._read_chunk(self._limits.upstream_data_timeout_s)
            part, rest = scanner.feed(chunk)
            if rest is not None:
                self._buf += rest
                yield part
                return
            yield part

    async def read_multiline_lines(self) -> list[str]:
        """Read a short multi-line body (CAPA) as unstuffed text lines."""
        lines: list[str] = []
        while True:
            raw = (await self.read_line()).rstrip(b"\r\n")
            if raw == b".":
                return lines
            if raw.startswith(b"."):
                raw = raw[1:]
            lines.append(raw.decode("utf-8", errors="replace"))
            if len(lines) > 200:
                raise UpstreamProtocolError(f"upstream POP3 server {self.where} sent an endless CAPA")

    async def quit(self) -> StatusLine:
        """Send QUIT (the upstream commits deletions) and close; return its reply."""
        try:
            return await self.command(b"QUIT\r\n")
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the connection WITHOUT QUIT: the upstream never enters UPDATE."""
        if self.closed:
            return
        self.closed = True
        if self._deadline is not None:
            self._deadline.cancel()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()  # frees the mailbox's session slot
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()

    # --- session setup ---------------------------------------------------------------------

    async def connect(self) -> StatusLine:
        """Connect (TLS on connect, or STLS), read the greeting, read CAPA; return the greeting."""
        try:
            async with asyncio.timeout(self._limits.upstream_connect_timeout_s):
                self._reader, self._writer = await open_stream(self.endpoint,
                                                               read_limit=2 * READ_CHUNK_BYTES)
        except (OSError, TimeoutError) as exc:
            raise self._translate(exc, "connect") from None
        try:
            greeting = parse_status(await self.read_line())
            if not greeting.ok:
                raise UpstreamUnavailable(f"upstream POP3 server {self.where} refused the "
                                          f"connection: -ERR {greeting.text}",
                                          account=self.account, reply=error_reply(greeting))
            if self.endpoint.tls == "starttls":
                await self._stls()
            await self._capa()
        except BaseException:
            await self.close()
            raise
        return greeting

    async def _capa(self) -> None:
        status = await self.command(b"CAPA\r\n")
        self.capabilities = tuple(await self.read_multiline_lines()) if status.ok else None

    async def _stls(self) -> None:
        status = await self.command(b"STLS\r\n")
        if not status.ok:
            raise UpstreamUnavailable(f"upstream POP3 server {self.where} refused STLS: "
                                      f"-ERR {status.text}", account=self.account,
                                      reply=error_reply(status))
        if self._buf:
            raise UpstreamProtocolError(f"upstream POP3 server {self.where} sent data before TLS",
                                        account=self.account)
        try:
            async with asyncio.timeout(self._limits.upstream_connect_timeout_s):
                await start_tls(self._stream()[1], self.endpoint)
        except (OSError, TimeoutError) as exc:
            raise self._translate(exc, "STLS") from None

    async def authenticate(self, mailbox: str, token: Secret) -> StatusLine:
        """Run ``AUTH XOAUTH2`` -> ``+`` -> response; return the final +OK line.

        Raises `TokenRejected` when the refusal is about the token (a refresh may help),
        `UpstreamAuthRejected` for other refusals ([IN-USE] ...), `UpstreamUnavailable` for
        [SYS/TEMP]."""
        await self.send(b"AUTH XOAUTH2\r\n")
        line = await self.read_line()
        if not _is_continuation(line):
            status = parse_status(line)
            raise UpstreamAuthRejected(
                f"upstream POP3 server {self.where} refused AUTH XOAUTH2: -ERR {status.text}",
                account=self.account, reply=error_reply(status))
        await self.send(encode_xoauth2(mailbox, token.reveal()).encode("ascii") + b"\r\n")
        line = await self.read_line()
        detail = ""
        if _is_continuation(line):  # error challenge (base64 JSON); an empty line ends it
            challenge = decode_error_challenge(line[1:].decode("ascii", errors="replace"))
            detail = f" (error status {challenge})" if challenge else ""
            await self.send(b"\r\n")
            line = await self.read_line()
        status = parse_status(line)
        if status.ok:
            return status
        message = (f"upstream POP3 server {self.where} refused the XOAUTH2 login for {mailbox}: "
                   f"-ERR {status.text}{detail}")
        reply = error_reply(status)
        if reply.enhanced_code == "SYS/TEMP":
            raise UpstreamUnavailable(message, account=self.account, reply=reply)
        if reply.enhanced_code in _NOT_A_TOKEN_PROBLEM:
            raise UpstreamAuthRejected(message, account=self.account, reply=reply)
        raise TokenRejected(message, account=self.account, reply=reply)


async def open_upstream(account: AccountConfig, tokens: TokenSource,
                        limits: LimitsConfig) -> tuple[UpstreamPop3Session, StatusLine]:
    """Connect and log in to the account's upstream POP3 server; return it and the +OK line.

    Raises AuthorizationNeeded / TokenRefreshFailed (from ``tokens``), UpstreamUnavailable,
    UpstreamAuthRejected (after one forced refresh when the token was refused) and
    UpstreamProtocolError.
    """
    endpoint = account.pop3
    if endpoint is None:
        raise UpstreamAuthRejected(f"account '{account.name}' has no pop3 upstream configured",
                                   account=account.name)

    slot = await loop_slots().acquire(  # accounts.NAME.max_upstream_pop3_sessions (None: no cap)
        pop3_slot_key(endpoint.host, account.mailbox), account.max_upstream_pop3_sessions,
        account=account.name, setting=f"accounts.{account.name}.max_upstream_pop3_sessions",
        wait_s=limits.upstream_slot_wait_s)
    try:
        session, status = await connect_and_log_in(
            tokens, account.name, lambda: _connected(endpoint, limits, account.name),
            lambda session, token: session.authenticate(account.mailbox, token))
    except BaseException:
        slot.release()
        raise
    session.on_close = slot.release
    return session, status


async def _connected(endpoint: UpstreamEndpoint, limits: LimitsConfig, account: str) -> UpstreamPop3Session:
    session = UpstreamPop3Session(endpoint, limits, account=account)
    await session.connect()
    return session

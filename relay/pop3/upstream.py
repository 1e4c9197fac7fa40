"""Async client for an account's upstream POP3 server, logged in with SASL XOAUTH2.

`open_upstream` connects (TLS on connect or STLS, verifying certificate and host name), reads the
greeting and CAPA, and runs the two-step ``AUTH XOAUTH2`` exchange (RFC 5034). A token the
upstream rejects is refreshed once (``TokenSource.force_refresh``) and tried again on a fresh
connection. Every low-level failure leaves this module as a `relay.errors` exception:
timeouts, OSError and TLS errors as `UpstreamUnavailable`, refusals as `UpstreamAuthRejected`
(carrying the upstream's own reply), garbage as `UpstreamProtocolError`.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable

from relay.config.model import AccountConfig, LimitsConfig, UpstreamEndpoint
from relay.errors import UpstreamAuthRejected, UpstreamProtocolError, UpstreamUnavailable
from relay.flow import needs_drain
from relay.pop3.replies import MultilineEndScanner, StatusLine, parse_status
from relay.sasl import decode_error_challenge, encode_xoauth2
from relay.secret import Secret
from relay.tlsutil import client_context
from relay.tokens.source import TokenSource
from relay.upstream_slots import loop_slots, pop3_slot_key

READ_CHUNK_BYTES = 64 * 1024
MAX_LINE_OCTETS = 8192  # status and CAPA lines; RFC 2449 allows 512, be lenient
_RESP_CODE = re.compile(r"^\[([A-Z/-]+)\]")
# -ERR codes (RFC 2449/3206) that say something other than "this token is bad".
_NOT_A_TOKEN_PROBLEM = frozenset({"IN-USE", "LOGIN-DELAY", "SYS/TEMP", "SYS/PERM"})


def _is_continuation(line: bytes) -> bool:
    """Tell a SASL ``+ [challenge]`` line from a ``+OK`` status line."""
    return line.startswith(b"+ ") or line.rstrip(b"\r\n") == b"+"


class TokenRejected(UpstreamAuthRejected):
    """The upstream refused the access token itself; a refreshed token may succeed."""


def response_code(text: str) -> str | None:
    """Return the RFC 2449 response code at the start of a reply text (``IN-USE``), if any."""
    match = _RESP_CODE.match(text)
    return match.group(1) if match else None


class UpstreamPop3Session:
    """One connection to an upstream POP3 server; after `open_upstream`, in TRANSACTION state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 endpoint: UpstreamEndpoint, limits: LimitsConfig) -> None:
        self._reader = reader
        self._writer = writer
        self.endpoint = endpoint
        self._limits = limits
        self._buf = bytearray()
        self.capabilities: tuple[str, ...] | None = None  # None: the server has no CAPA
        self.closed = False
        self.on_close: Callable[[], None] | None = None  # called once when closed (frees its slot)

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.endpoint.host}:{self.endpoint.port}"

    # --- I/O primitives --------------------------------------------------------------------

    async def _read_chunk(self, timeout_s: float) -> bytes:
        try:
            # asyncio.timeout, not wait_for: no new Task per read (Python 3.11).
            async with asyncio.timeout(timeout_s):
                data = await self._reader.read(READ_CHUNK_BYTES)
        except TimeoutError:
            raise UpstreamUnavailable(f"upstream POP3 server {self.where} did not answer within "
                                      f"{timeout_s:g} s") from None
        except OSError as exc:  # includes ssl.SSLError and ConnectionResetError
            raise UpstreamUnavailable(f"connection to upstream POP3 server {self.where} "
                                      f"failed: {exc}") from None
        if not data:
            raise UpstreamUnavailable(f"upstream POP3 server {self.where} closed the connection")
        return data

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
        try:
            self._writer.write(line)
            # A command line never fills the buffer: skip the drain and its timer (relay.flow);
            # the reply read that follows has its own timeout.
            if needs_drain(self._writer):
                async with asyncio.timeout(self._limits.upstream_command_timeout_s):
                    await self._writer.drain()
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"sending to upstream POP3 server {self.where} failed: "
                                      f"{exc or 'timeout'}") from None

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
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()  # frees the mailbox's session slot
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            self._writer.transport.abort()

    # --- session setup ---------------------------------------------------------------------

    async def _capa(self) -> None:
        status = await self.command(b"CAPA\r\n")
        self.capabilities = tuple(await self.read_multiline_lines()) if status.ok else None

    async def _stls(self, host: str, ctx: ssl.SSLContext) -> None:
        status = await self.command(b"STLS\r\n")
        if not status.ok:
            raise UpstreamUnavailable(f"upstream POP3 server {self.where} refused STLS: "
                                      f"-ERR {status.text}", reply=status.text)
        if self._buf:
            raise UpstreamProtocolError(f"upstream POP3 server {self.where} sent data before TLS")
        try:
            await asyncio.wait_for(self._writer.start_tls(ctx, server_hostname=host),
                                   self._limits.upstream_connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"TLS with upstream POP3 server {self.where} failed: "
                                      f"{exc or 'timeout'}") from None

    async def _auth_xoauth2(self, mailbox: str, token: Secret) -> StatusLine:
        """Run ``AUTH XOAUTH2`` -> ``+`` -> response; return the final +OK line."""
        await self.send(b"AUTH XOAUTH2\r\n")
        line = await self.read_line()
        if not _is_continuation(line):
            status = parse_status(line)
            raise UpstreamAuthRejected(
                f"upstream POP3 server {self.where} refused AUTH XOAUTH2: -ERR {status.text}",
                reply=status.text)
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
        code = response_code(status.text)
        if code == "SYS/TEMP":
            raise UpstreamUnavailable(message, reply=status.text)
        if code in _NOT_A_TOKEN_PROBLEM:
            raise UpstreamAuthRejected(message, reply=status.text)
        raise TokenRejected(message, reply=status.text)


async def _connect(endpoint: UpstreamEndpoint, limits: LimitsConfig) -> UpstreamPop3Session:
    ctx = client_context(endpoint) if endpoint.tls != "none" else None
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                endpoint.host, endpoint.port, limit=2 * READ_CHUNK_BYTES,
                ssl=ctx if endpoint.tls == "implicit" else None,
                server_hostname=endpoint.host if endpoint.tls == "implicit" else None),
            limits.upstream_connect_timeout_s)
    except TimeoutError:
        raise UpstreamUnavailable(f"connecting to upstream POP3 server {where} timed out after "
                                  f"{limits.upstream_connect_timeout_s:g} s") from None
    except OSError as exc:
        raise UpstreamUnavailable(f"cannot connect to upstream POP3 server {where}: {exc}") from None
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    session = UpstreamPop3Session(reader, writer, endpoint, limits)
    try:
        greeting = parse_status(await session.read_line())
        if not greeting.ok:
            raise UpstreamUnavailable(f"upstream POP3 server {where} refused the connection: "
                                      f"-ERR {greeting.text}", reply=greeting.text)
        if endpoint.tls == "starttls":
            assert ctx is not None
            await session._stls(endpoint.host, ctx)
        await session._capa()
    except BaseException:
        await session.close()
        raise
    return session


async def _login(account: AccountConfig, endpoint: UpstreamEndpoint, token: Secret,
                 limits: LimitsConfig) -> tuple[UpstreamPop3Session, StatusLine]:
    session = await _connect(endpoint, limits)
    try:
        status = await session._auth_xoauth2(account.mailbox, token)
    except BaseException:
        await session.close()
        raise
    return session, status


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
        session, status = await _login_refreshing(account, endpoint, tokens, limits)
    except BaseException:
        slot.release()
        raise
    session.on_close = slot.release
    return session, status


async def _login_refreshing(account: AccountConfig, endpoint: UpstreamEndpoint, tokens: TokenSource,
                            limits: LimitsConfig) -> tuple[UpstreamPop3Session, StatusLine]:
    token = await tokens.get_token(account.name)
    try:
        return await _login(account, endpoint, token, limits)
    except TokenRejected:
        token = await tokens.force_refresh(account.name, rejected=token)
    try:
        return await _login(account, endpoint, token, limits)
    except TokenRejected as exc:
        raise UpstreamAuthRejected(f"{exc} (also after a forced token refresh)",
                                   account=account.name, reply=exc.reply) from None

"""Async client for an account's upstream IMAP server, logged in with SASL XOAUTH2.

`open_upstream` connects (TLS on connect or STARTTLS, verifying certificate and host name), reads
the greeting and the capabilities, and runs ``AUTHENTICATE XOAUTH2``: with the initial response
on the command line when the server offers SASL-IR (RFC 4959), else after the ``+``
continuation. A failure challenge (``+ <base64 JSON>``, Gmail) is answered with an empty line,
then the tagged NO arrives (PROTOCOLS.md 9.4). A token the upstream refuses is refreshed once and
tried again on a fresh connection (`relay.upstream.login`). Low-level failures leave as
`relay.errors` exceptions: timeouts, OSError and TLS errors as `UpstreamUnavailable`, refusals as
`UpstreamAuthRejected` (carrying the upstream's own text), garbage as `UpstreamProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass

from relay.config.model import AccountConfig, LimitsConfig, UpstreamEndpoint
from relay.errors import UpstreamAuthRejected, UpstreamProtocolError, UpstreamReply, UpstreamUnavailable
from relay.sasl import decode_error_challenge, encode_xoauth2
from relay.secret import Secret
from relay.tokens.source import TokenSource
from relay.upstream.login import TokenRejected, connect_and_log_in
from relay.upstream.stream import open_stream, tls_context

READ_CHUNK_BYTES = 64 * 1024
MAX_LINE_OCTETS = 64 * 1024  # a greeting or CAPABILITY line; generous, but bounded
_CODE = re.compile(r"^\[([A-Za-z0-9-]+)(?: ([^\]]*))?\]")
# NO codes (RFC 5530) that say "not now" rather than "this token is bad".
_TEMPORARY = frozenset({"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "OVERQUOTA"})
_NOT_A_TOKEN_PROBLEM = frozenset({"CONTACTADMIN", "PRIVACYREQUIRED", "EXPIRED"})
# Capabilities that describe the relay-to-upstream login, not the session the client gets.
_LOGIN_ONLY_CAPS = ("AUTH=", "SASL-IR", "STARTTLS", "LOGINDISABLED")


@dataclass(frozen=True)
class TaggedReply:
    """A tagged status line from the upstream: ``OK``/``NO``/``BAD``, optional code, text."""

    status: str
    code: str | None
    code_args: str | None
    text: str


def parse_tagged(line: bytes, tag: bytes) -> TaggedReply | None:
    """Parse ``tag STATUS [CODE args] text``; None when the line has another tag."""
    if not line.startswith(tag + b" "):
        return None
    text = line[len(tag) + 1:].rstrip(b"\r\n").decode("utf-8", errors="replace")
    status, _, rest = text.partition(" ")
    status = status.upper()
    if status not in ("OK", "NO", "BAD"):
        raise UpstreamProtocolError(f"upstream IMAP server sent an unexpected reply: {text[:120]!r}")
    match = _CODE.match(rest)
    if match is None:
        return TaggedReply(status, None, None, rest)
    return TaggedReply(status, match.group(1).upper(), match.group(2), rest[match.end():].lstrip())


def capabilities_in(line: bytes) -> tuple[str, ...] | None:
    """The capability list of a ``* CAPABILITY ...`` line or a ``[CAPABILITY ...]`` code."""
    text = line.rstrip(b"\r\n").decode("ascii", errors="replace")
    if text.upper().startswith("* CAPABILITY "):
        return tuple(text[13:].split())
    start = text.upper().find("[CAPABILITY ")
    if start < 0:
        return None
    end = text.find("]", start)
    return tuple(text[start + 12: end if end > 0 else None].split())


def client_capabilities(upstream: tuple[str, ...]) -> str:
    """The upstream's post-login capabilities the client may use through the relay.

    The relay splices the session byte for byte after login, so extensions such as IDLE,
    LITERAL+ or COMPRESS=DEFLATE work end to end; only what concerns logging in is dropped.
    """
    kept = [c for c in upstream if not c.upper().startswith(_LOGIN_ONLY_CAPS)]
    return " ".join(kept) or "IMAP4rev1"


class UpstreamImapSession:
    """One connection to an upstream IMAP server; after `open_upstream`, logged in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 endpoint: UpstreamEndpoint, limits: LimitsConfig) -> None:
        self.reader = reader
        self.writer = writer
        self.endpoint = endpoint
        self._limits = limits
        self._buf = bytearray()
        self._tag_number = 0
        self.capabilities: tuple[str, ...] = ()
        self.closed = False

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.endpoint.host}:{self.endpoint.port}"

    def next_tag(self) -> bytes:
        """A fresh tag for the relay's own commands (the client never sees them)."""
        self._tag_number += 1
        return b"xr%d" % self._tag_number

    def take_buffered(self) -> bytes:
        """Bytes read past the last line (the session passes them to the client first)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def read_line(self) -> bytes:
        """Return the next line including its line end; a ``* BYE`` ends the connection."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                if line[:6].upper() == b"* BYE ":
                    text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
                    raise UpstreamUnavailable(f"upstream IMAP server {self.where} closed the "
                                              f"session: {text}",
                                              reply=UpstreamReply("BYE", None, text[6:]))
                return line
            if len(self._buf) > MAX_LINE_OCTETS:
                raise UpstreamProtocolError(f"upstream IMAP server {self.where} sent an overlong line")
            self._buf += await self._read_chunk()

    async def _read_chunk(self) -> bytes:
        timeout_s = self._limits.upstream_command_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                data = await self.reader.read(READ_CHUNK_BYTES)
        except TimeoutError:
            raise UpstreamUnavailable(f"upstream IMAP server {self.where} did not answer within "
                                      f"{timeout_s:g} s") from None
        except OSError as exc:
            raise UpstreamUnavailable(f"connection to upstream IMAP server {self.where} failed: "
                                      f"{exc}") from None
        if not data:
            raise UpstreamUnavailable(f"upstream IMAP server {self.where} closed the connection")
        return data

    async def send(self, data: bytes) -> None:
        """Write a command line (with CRLF)."""
        try:
            self.writer.write(data)
            async with asyncio.timeout(self._limits.upstream_command_timeout_s):
                await self.writer.drain()
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"sending to upstream IMAP server {self.where} failed: "
                                      f"{exc or 'timeout'}") from None

    async def command(self, line: bytes) -> TaggedReply:
        """Send ``TAG line`` and read to its tagged reply, noting CAPABILITY data on the way."""
        tag = self.next_tag()
        await self.send(tag + b" " + line + b"\r\n")
        return await self.tagged_reply(tag)

    async def tagged_reply(self, tag: bytes) -> TaggedReply:
        """Read untagged lines up to the reply tagged ``tag``."""
        while True:
            line = await self.read_line()
            caps = capabilities_in(line)
            if caps is not None:
                self.capabilities = caps
            reply = parse_tagged(line, tag)
            if reply is not None:
                return reply

    async def logout(self) -> None:
        """Send LOGOUT (best effort) and close; for `relay check`, which ends its own session."""
        # The BYE raises UpstreamUnavailable by design; closing is all that is left then.
        with contextlib.suppress(UpstreamUnavailable, UpstreamProtocolError):
            await self.command(b"LOGOUT")
        await self.close()

    async def close(self) -> None:
        """Close the connection (no LOGOUT: the client's session already ended or never began)."""
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            self.writer.transport.abort()

    # --- session setup ---------------------------------------------------------------------

    async def greet(self) -> None:
        """Read the greeting; fetch the capabilities when it carries none."""
        line = await self.read_line()
        text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if not text.upper().startswith("* OK"):
            raise UpstreamProtocolError(f"upstream IMAP server {self.where} sent an unexpected "
                                        f"greeting: {text[:120]!r}")
        caps = capabilities_in(line)
        if caps is not None:
            self.capabilities = caps
        else:
            await self._capability()

    async def _capability(self) -> None:
        reply = await self.command(b"CAPABILITY")
        if reply.status != "OK":
            raise UpstreamProtocolError(f"upstream IMAP server {self.where} refused CAPABILITY: "
                                        f"{reply.status} {reply.text}")

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        """Upgrade with STARTTLS, then ask for the capabilities again (RFC 9051 6.2.1)."""
        reply = await self.command(b"STARTTLS")
        if reply.status != "OK":
            raise UpstreamUnavailable(f"upstream IMAP server {self.where} refused STARTTLS: "
                                      f"{reply.status} {reply.text}", reply=reply_value(reply))
        if self._buf:
            raise UpstreamProtocolError(f"upstream IMAP server {self.where} sent data before TLS")
        try:
            await asyncio.wait_for(self.writer.start_tls(ctx, server_hostname=self.endpoint.host),
                                   self._limits.upstream_connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"TLS with upstream IMAP server {self.where} failed: "
                                      f"{exc or 'timeout'}") from None
        await self._capability()

    async def authenticate_xoauth2(self, mailbox: str, token: Secret) -> TaggedReply:
        """Run AUTHENTICATE XOAUTH2; return the tagged OK (raise on anything else)."""
        response = encode_xoauth2(mailbox, token.reveal()).encode("ascii")
        tag = self.next_tag()
        if "SASL-IR" in (c.upper() for c in self.capabilities):
            await self.send(tag + b" AUTHENTICATE XOAUTH2 " + response + b"\r\n")
        else:
            await self.send(tag + b" AUTHENTICATE XOAUTH2\r\n")
            line = await self._continuation_or_reply(tag)
            if isinstance(line, TaggedReply):
                raise self._refusal(line, mailbox, "")
            await self.send(response + b"\r\n")
        detail = ""
        result = await self._continuation_or_reply(tag)
        if not isinstance(result, TaggedReply):  # error challenge; an empty line ends it
            challenge = decode_error_challenge(result[1:].strip().decode("ascii", errors="replace"))
            detail = f" (error status {challenge})" if challenge else ""
            await self.send(b"\r\n")
            result = await self._continuation_or_reply(tag)
            if not isinstance(result, TaggedReply):
                raise UpstreamProtocolError(f"upstream IMAP server {self.where} sent a second "
                                            "XOAUTH2 challenge")
        if result.status == "OK":
            if result.code == "CAPABILITY" and result.code_args:
                self.capabilities = tuple(result.code_args.split())
            else:  # the list before login is stale now (RFC 9051 6.2.2): ask again
                await self._capability()
            return result
        raise self._refusal(result, mailbox, detail)

    async def _continuation_or_reply(self, tag: bytes) -> bytes | TaggedReply:
        while True:
            line = await self.read_line()
            if line.startswith(b"+"):
                return line
            reply = parse_tagged(line, tag)
            if reply is not None:
                return reply

    def _refusal(self, reply: TaggedReply, mailbox: str, detail: str) -> Exception:
        code = f"[{reply.code}] " if reply.code else ""
        text = f"{reply.status} {code}{reply.text}"
        message = (f"upstream IMAP server {self.where} refused the XOAUTH2 login for {mailbox}: "
                   f"{text}{detail}")
        value = reply_value(reply)
        if reply.code in _TEMPORARY:
            return UpstreamUnavailable(message, reply=value)
        if reply.status == "BAD" or reply.code in _NOT_A_TOKEN_PROBLEM:
            return UpstreamAuthRejected(message, reply=value)
        return TokenRejected(message, reply=value)


async def _connect(endpoint: UpstreamEndpoint, limits: LimitsConfig) -> UpstreamImapSession:
    ctx = tls_context(endpoint)
    where = f"{endpoint.host}:{endpoint.port}"
    try:  # TCP (TLS first for tls: implicit) with TCP_NODELAY, as for SMTP and POP3
        reader, writer = await asyncio.wait_for(
            open_stream(endpoint, read_limit=2 * READ_CHUNK_BYTES), limits.upstream_connect_timeout_s)
    except TimeoutError:
        raise UpstreamUnavailable(f"connecting to upstream IMAP server {where} timed out after "
                                  f"{limits.upstream_connect_timeout_s:g} s") from None
    except OSError as exc:
        raise UpstreamUnavailable(f"cannot connect to upstream IMAP server {where}: {exc}") from None
    session = UpstreamImapSession(reader, writer, endpoint, limits)
    try:
        await session.greet()
        if endpoint.tls == "starttls":
            assert ctx is not None
            await session.starttls(ctx)
    except BaseException:
        await session.close()
        raise
    return session


async def open_upstream(account: AccountConfig, tokens: TokenSource,
                        limits: LimitsConfig) -> tuple[UpstreamImapSession, TaggedReply]:
    """Connect and log in to the account's upstream IMAP server; return it and the tagged OK.

    Raises AuthorizationNeeded / TokenRefreshFailed (from ``tokens``), UpstreamUnavailable,
    UpstreamAuthRejected (after one forced refresh when the token was refused) and
    UpstreamProtocolError.
    """
    endpoint = account.imap
    if endpoint is None:
        raise UpstreamAuthRejected(f"account '{account.name}' has no imap upstream configured",
                                   account=account.name)

    return await connect_and_log_in(
        tokens, account.name, lambda: _connect(endpoint, limits),
        lambda session, token: session.authenticate_xoauth2(account.mailbox, token))


def reply_value(reply: TaggedReply) -> UpstreamReply:
    """A tagged reply as the value `relay.errors.UpstreamError` carries (``[CODE]`` in the text)."""
    code = f"[{reply.code}] " if reply.code else ""
    return UpstreamReply(reply.status, reply.code, f"{code}{reply.text}")

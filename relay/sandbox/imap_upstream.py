"""A small loopback IMAP upstream that behaves like Gmail's IMAP with XOAUTH2, for demo and tests.

TLS on connect; ``AUTHENTICATE XOAUTH2`` with the initial response (SASL-IR) or after ``+`` (with
``sasl_ir=False`` it does not offer SASL-IR and refuses an initial response, like servers without
RFC 4959); a refused token gets Gmail's error challenge, then ``NO`` once the client sends an
empty line (PROTOCOLS.md 9.4). After login: SELECT/EXAMINE INBOX, FETCH/UID FETCH of one message
(BODY[], BODY.PEEK[] or RFC822; UID = sequence number), IDLE until DONE, NOOP, LOGOUT. The
messages are read from ``messages(user)`` on every SELECT (the sandbox world passes the POP3
maildrops, so mail sent through the sandbox SMTP server shows up here too).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from relay.errors import ProtocolInputError
from relay.sandbox.loop import LoopbackServer
from relay.sandbox.smtp_upstream import token_matcher
from relay.sasl import decode_xoauth2, encode_error_challenge
from relay.tlsutil import server_context

MAX_LINE_BYTES = 16 * 1024
_FETCH = re.compile(rb"^(\d+) \(?(?:UID )?(BODY\.PEEK\[\]|BODY\[\]|RFC822)\)?$", re.IGNORECASE)


class SandboxImapServer(LoopbackServer):
    """Loopback IMAP over TLS with XOAUTH2; ``validate_token(token) -> mailbox | None``."""

    name = "imap"

    def __init__(self, validate_token: Callable[[str], str | None], cert_file: Path, key_file: Path,
                 messages: Callable[[str], list[bytes]], *, port: int = 0, sasl_ir: bool = True,
                 authorize: Callable[[str, str], bool] | None = None) -> None:
        super().__init__(port=port, ssl_context=server_context(cert_file, key_file, "sandbox.imap"))
        self.messages = messages
        self.sasl_ir = sasl_ir
        self.authorize = authorize or token_matcher(validate_token)

    def capabilities(self, *, authenticated: bool) -> bytes:
        """The capability list before or after login."""
        if authenticated:
            return b"IMAP4rev1 IDLE UIDPLUS CHILDREN NAMESPACE COMPRESS=DEFLATE"
        return b"IMAP4rev1 IDLE ID AUTH=XOAUTH2" + (b" SASL-IR" if self.sasl_ir else b"")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until LOGOUT or disconnect."""
        session = _ImapSession(self, reader, writer)
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            await session.run()


class _ImapSession:
    def __init__(self, server: SandboxImapServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.user: str | None = None
        self.selected: list[bytes] | None = None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        raw = await self.reader.readuntil(b"\n")
        if len(raw) > MAX_LINE_BYTES:
            raise ConnectionError("line too long")
        return raw.rstrip(b"\r\n")

    async def run(self) -> None:
        caps = self.server.capabilities(authenticated=False)
        await self.send(b"* OK [CAPABILITY " + caps + b"] Sandbox IMAP ready\r\n")
        while True:
            parts = (await self.line()).split(b" ", 2)
            if len(parts) < 2:
                await self.send(b"* BAD Missing tag or command\r\n")
                continue
            tag, verb, rest = parts[0], parts[1].upper(), parts[2] if len(parts) > 2 else b""
            self.server.count(f"cmd_{verb.decode(errors='replace').lower()}")
            if not await self.dispatch(tag, verb, rest):
                return

    async def dispatch(self, tag: bytes, verb: bytes, rest: bytes) -> bool:
        authed = self.user is not None
        if verb == b"CAPABILITY":
            caps = self.server.capabilities(authenticated=authed)
            await self.send(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK Success\r\n")
        elif verb == b"NOOP":
            await self.send(tag + b" OK Success\r\n")
        elif verb == b"LOGOUT":
            await self.send(b"* BYE LOGOUT Requested\r\n" + tag + b" OK Quoth the Raven\r\n")
            return False
        elif verb == b"ID":
            await self.send(b'* ID ("name" "sandbox")\r\n' + tag + b" OK Success\r\n")
        elif verb == b"AUTHENTICATE" and not authed:
            await self.authenticate(tag, rest)
        elif not authed:
            await self.send(tag + b" BAD Command not valid before login\r\n")
        elif verb in (b"SELECT", b"EXAMINE"):
            assert self.user is not None
            self.selected = self.server.messages(self.user)
            await self.send(b"* FLAGS (\\Seen)\r\n* %d EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"
                            b"%s OK [READ-WRITE] Success\r\n" % (len(self.selected), tag))
        elif verb == b"IDLE":
            await self.send(b"+ idling\r\n")
            while (await self.line()).upper() != b"DONE":
                pass
            await self.send(tag + b" OK IDLE terminated (Success)\r\n")
        elif verb in (b"FETCH", b"UID"):
            await self.fetch(tag, verb, rest)
        else:
            await self.send(tag + b" BAD Unknown command\r\n")
        return True

    async def authenticate(self, tag: bytes, rest: bytes) -> None:
        mechanism, _, response = rest.partition(b" ")
        if mechanism.upper() != b"XOAUTH2":
            await self.send(tag + b" NO Unsupported mechanism\r\n")
            return
        if response and not self.server.sasl_ir:
            await self.send(tag + b" BAD SASL-IR is not supported here\r\n")
            return
        if not response:
            await self.send(b"+ \r\n")
            response = await self.line()
        try:
            creds = decode_xoauth2(response)
        except ProtocolInputError:
            await self.send(tag + b" BAD Invalid SASL argument\r\n")
            return
        if not creds.user or not self.server.authorize(creds.token, creds.user):
            self.server.count("auth_failed")
            await self.send(b"+ " + encode_error_challenge(scope="https://mail.google.com/").encode()
                            + b"\r\n")
            await self.line()
            await self.send(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
            return
        self.server.count("auth_ok")
        self.user = creds.user
        caps = self.server.capabilities(authenticated=True)
        await self.send(tag + b" OK [CAPABILITY " + caps + b"] " + creds.user.encode()
                        + b" authenticated (Success)\r\n")

    async def fetch(self, tag: bytes, verb: bytes, rest: bytes) -> None:
        if verb == b"UID":
            sub, _, rest = rest.partition(b" ")
            if sub.upper() != b"FETCH":
                await self.send(tag + b" BAD Unknown UID command\r\n")
                return
        match = _FETCH.match(rest)
        if self.selected is None or match is None:
            await self.send(tag + b" BAD Select a mailbox, then FETCH n BODY[]\r\n")
            return
        number = int(match.group(1))
        if not 1 <= number <= len(self.selected):
            await self.send(tag + b" OK Success (no such message)\r\n")
            return
        content = self.selected[number - 1]
        item = b"RFC822" if match.group(2).upper() == b"RFC822" else b"BODY[]"
        await self.send(b"* %d FETCH (UID %d %s {%d}\r\n" % (number, number, item, len(content))
                        + content + b")\r\n" + tag + b" OK Success\r\n")

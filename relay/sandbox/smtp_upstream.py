"""`SandboxSmtpServer`: an upstream submission server that behaves like Exchange Online / Gmail.

STARTTLS (587-style) by default, AUTH XOAUTH2 / OAUTHBEARER checked against the sandbox OAuth
provider, every accepted message stored byte-exact with its envelope. Fault switches are plain
attributes, safe to set from any thread.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from relay.errors import ProtocolInputError
from relay.sandbox.lines import BufferedLines, LineTooLong
from relay.sandbox.loop import LoopbackServer
from relay.sandbox.oauth_grants import ANY_MAILBOX
from relay.sasl import decode_oauthbearer, decode_xoauth2, encode_error_challenge
from relay.tlsutil import server_context

MAX_LINE_BYTES = 12288 + 2  # Postfix accepts 12288 after a 334; we allow it for any line
DEFAULT_MAX_MESSAGE_BYTES = 35 * 1024 * 1024

AuthFailureStyle = Literal["google", "microsoft"]
SmtpTlsMode = Literal["starttls", "implicit", "none"]


@dataclass(frozen=True)
class StoredMessage:
    """A message the server accepted: the bytes after dot-unstuffing (CRLF kept) and its envelope."""

    seq: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    user: str | None  # the authenticated mailbox (XOAUTH2 user=)
    mail_options: tuple[str, ...] = ()
    received_at: float = 0.0


def token_matcher(validate_token: Callable[[str], str | None]) -> Callable[[str, str], bool]:
    """Turn a token->mailbox validator into a (token, mailbox)->allowed check."""
    def allows(token: str, mailbox: str) -> bool:
        owner = validate_token(token)
        return owner is not None and (owner == ANY_MAILBOX or owner.lower() == mailbox.lower())
    return allows


def _address(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """Parse ``FROM:<addr> PARAMS`` / ``TO:<addr>``; None on a syntax error."""
    head, sep, rest = arg.partition(":")
    if not sep or head.strip().upper() != keyword:
        return None
    rest = rest.strip()
    if not rest.startswith("<") or ">" not in rest:
        return None
    addr, _, params = rest[1:].partition(">")
    return addr, params.split()


class SandboxSmtpServer(LoopbackServer):
    """A loopback SMTP submission server with XOAUTH2 and fault switches.

    ``validate_token(token) -> mailbox | None`` is usually `SandboxOAuthProvider.validate_access_token`;
    ``authorize(token, mailbox) -> bool``, when given, decides instead (app-only mailbox sets).
    """

    name = "smtp"

    def __init__(
        self,
        validate_token: Callable[[str], str | None],
        cert_file: Path,
        key_file: Path,
        *,
        port: int = 0,
        tls_mode: SmtpTlsMode = "starttls",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        hostname: str = "smtp.sandbox.test",
        auth_failure_style: AuthFailureStyle = "google",
        authorize: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._tls = server_context(cert_file, key_file, "sandbox.smtp")
        super().__init__(port=port, ssl_context=self._tls if tls_mode == "implicit" else None)
        self.tls_mode = tls_mode
        self.hostname = hostname
        self.max_message_bytes = max_message_bytes
        self.auth_failure_style: AuthFailureStyle = auth_failure_style
        self.authorize = authorize or token_matcher(validate_token)
        self._messages: list[StoredMessage] = []
        self._seq = itertools.count(1)
        self._arrived = threading.Condition(self.lock)
        self.clear_faults()

    def clear_faults(self) -> None:
        """Reset every fault switch to normal behaviour."""
        self.reject_rcpt: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        self.final_reply: str | None = None
        self.greeting_reply: str | None = None
        self.drop_after_data_bytes: int | None = None
        self.never_greet = False
        self.delay_s = 0.0

    # --- stored messages ----------------------------------------------------------------------

    def messages(self) -> list[StoredMessage]:
        """Every accepted message, oldest first."""
        with self.lock:
            return list(self._messages)

    def clear(self) -> None:
        """Forget the stored messages."""
        with self.lock:
            self._messages.clear()

    def wait_for_messages(self, count: int, timeout_s: float = 10.0) -> list[StoredMessage]:
        """Block until at least ``count`` messages are stored (or the timeout passes); return them."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self._messages) >= count, timeout_s)
            return list(self._messages)

    def _store(self, mail_from: str, rcpt_tos: tuple[str, ...], data: bytes, user: str | None,
               mail_options: tuple[str, ...]) -> StoredMessage:
        with self._arrived:
            msg = StoredMessage(next(self._seq), mail_from, rcpt_tos, data, user, mail_options, time.time())
            self._messages.append(msg)
            self._counters["messages"] += 1
            self._arrived.notify_all()
            return msg

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one SMTP session."""
        await _SmtpSession(self, reader, writer).run()


class _SmtpSession:
    """One connection's state: TLS, EHLO, authenticated user, the current transaction."""

    def __init__(self, server: SandboxSmtpServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.lines = BufferedLines(reader)
        self.writer = writer
        self.tls = server.tls_mode == "implicit"
        self.helo: str | None = None
        self.user: str | None = None
        self.reset()

    def reset(self) -> None:
        self.mail_from: str | None = None
        self.mail_options: list[str] = []
        self.rcpts: list[str] = []

    async def reply(self, text: str) -> None:
        if (delay_s := self.server.delay_s) > 0:
            await asyncio.sleep(delay_s)
        self.writer.write(text.encode("utf-8") + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        srv = self.server
        if srv.never_greet:
            while await self.lines.readline(MAX_LINE_BYTES) is not None:
                pass
            return
        if (greeting := srv.greeting_reply) is not None:
            await self.reply(greeting)
            return
        await self.reply(f"220 {srv.hostname} ESMTP sandbox ready")
        while True:
            try:
                raw = await self.lines.readline(MAX_LINE_BYTES)
            except LineTooLong:
                await self.reply("500 5.5.2 Line too long")
                continue
            if raw is None:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, arg = line.partition(" ")
            if not await self.dispatch(verb.upper(), arg.strip()):
                return

    async def dispatch(self, verb: str, arg: str) -> bool:
        """Handle one command; False ends the session."""
        if verb == "QUIT":
            await self.reply("221 2.0.0 closing connection")
            return False
        handler = {"EHLO": self.ehlo, "HELO": self.helo_cmd, "STARTTLS": self.starttls, "AUTH": self.auth,
                   "MAIL": self.mail, "RCPT": self.rcpt, "DATA": self.data}.get(verb)
        if handler is not None:
            return await handler(arg)
        if verb == "RSET":
            self.reset()
            await self.reply("250 2.0.0 OK")
        elif verb == "NOOP":
            await self.reply("250 2.0.0 OK")
        elif verb == "VRFY":
            await self.reply("252 2.1.5 Cannot VRFY user")
        else:
            await self.reply("502 5.5.2 Command not recognized")
        return True

    async def ehlo(self, arg: str) -> bool:
        if not arg:
            await self.reply("501 5.5.4 EHLO requires a domain")
            return True
        self.helo = arg
        self.reset()
        exts = [f"{self.server.hostname} at your service, [{arg}]"]
        if not self.tls and self.server.tls_mode == "starttls":
            exts.append("STARTTLS")
        else:
            exts.append("AUTH XOAUTH2 OAUTHBEARER")
        exts += [f"SIZE {self.server.max_message_bytes}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                 "PIPELINING"]
        text = "\r\n".join(f"250-{e}" for e in exts[:-1]) + f"\r\n250 {exts[-1]}"
        await self.reply(text)
        return True

    async def helo_cmd(self, arg: str) -> bool:
        if not arg:
            await self.reply("501 5.5.4 HELO requires a domain")
            return True
        self.helo = arg
        self.reset()
        await self.reply(f"250 {self.server.hostname} at your service")
        return True

    async def starttls(self, arg: str) -> bool:
        if self.tls or self.server.tls_mode != "starttls":
            await self.reply("503 5.5.1 TLS already active" if self.tls else "502 5.5.1 STARTTLS not offered")
            return True
        await self.reply("220 2.0.0 Ready to start TLS")
        self.lines.discard_buffer()
        await self.writer.start_tls(self.server._tls)
        self.tls = True
        self.helo = None
        self.user = None
        self.reset()
        return True

    async def auth(self, arg: str) -> bool:
        srv = self.server
        if not self.tls and srv.tls_mode == "starttls":
            await self.reply("530 5.7.0 Must issue a STARTTLS command first")
            return True
        if self.helo is None:
            await self.reply("503 5.5.1 EHLO/HELO first")
            return True
        if self.user is not None:
            await self.reply("503 5.5.1 Already authenticated")
            return True
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech not in ("XOAUTH2", "OAUTHBEARER"):
            await self.reply("504 5.5.4 Unrecognized authentication type")
            return True
        response = initial.strip()
        if not response:
            await self.reply("334 ")
            raw = await self._read_auth_line()
            if raw is None:
                return False
            response = raw
        elif response == "=":
            response = ""
        if response == "*":
            if srv.auth_failure_style == "microsoft":
                await self.reply("535 5.7.3 Authentication unsuccessful")
            else:
                await self.reply("501 5.7.0 Authentication aborted")
            return True
        try:
            creds = decode_xoauth2(response) if mech == "XOAUTH2" else decode_oauthbearer(response)
        except ProtocolInputError:
            await self.reply("501 5.5.2 Cannot decode response")
            return True
        if creds.user and srv.authorize(creds.token, creds.user):
            self.user = creds.user
            srv.count("auth_ok")
            await self.reply("235 2.7.0 Accepted")
            return True
        srv.count("auth_failed")
        if srv.auth_failure_style == "microsoft":
            await self.reply("535 5.7.3 Authentication unsuccessful")
            return True
        await self.reply("334 " + encode_error_challenge())
        if await self._read_auth_line() is None:
            return False
        await self.reply("535 5.7.8 Username and Password not accepted")
        return True

    async def _read_auth_line(self) -> str | None:
        try:
            raw = await self.lines.readline(MAX_LINE_BYTES)
        except LineTooLong:
            return "*"
        return None if raw is None else raw.decode("ascii", "replace").rstrip("\r\n")

    async def mail(self, arg: str) -> bool:
        if self.user is None:
            await self.reply("530 5.7.0 Authentication required")
            return True
        if self.mail_from is not None:
            await self.reply("503 5.5.1 Sender already specified")
            return True
        parsed = _address(arg, "FROM")
        if parsed is None:
            await self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            return True
        addr, params = parsed
        for p in params:
            key, _, value = p.partition("=")
            if key.upper() == "SIZE" and value.isdigit() and int(value) > self.server.max_message_bytes:
                await self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                return True
        mail_reply = self.server.mail_reply  # read once: tests may flip switches between commands
        if mail_reply is not None:
            await self.reply(mail_reply)
            if not mail_reply.startswith("2"):
                return True
        else:
            await self.reply("250 2.1.0 Sender OK")
        self.mail_from, self.mail_options = addr, params
        return True

    async def rcpt(self, arg: str) -> bool:
        if self.mail_from is None:
            await self.reply("503 5.5.1 Need MAIL command")
            return True
        parsed = _address(arg, "TO")
        if parsed is None or not parsed[0]:
            await self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return True
        addr = parsed[0]
        rejection = self.server.reject_rcpt.get(addr, self.server.reject_rcpt.get(addr.lower()))
        if rejection is not None:
            await self.reply(rejection)
            return True
        self.rcpts.append(addr)
        await self.reply("250 2.1.5 Recipient OK")
        return True

    async def data(self, arg: str) -> bool:
        srv = self.server
        if self.mail_from is None or not self.rcpts:
            await self.reply("503 5.5.1 Need MAIL and RCPT first")
            return True
        data_reply = srv.data_reply
        if data_reply is not None:
            await self.reply(data_reply)
            if not data_reply.startswith("354"):
                self.reset()
                return True
        else:
            await self.reply("354 Go ahead, end data with <CR><LF>.<CR><LF>")
        limit = srv.drop_after_data_bytes

        def keep_going(received: int) -> bool:
            return limit is None or received < limit

        body, oversize = await self.lines.read_dot_terminated(srv.max_message_bytes, keep_going)
        if body is None:
            self.writer.transport.abort()
            return False
        mail_from, rcpts, options = self.mail_from, tuple(self.rcpts), tuple(self.mail_options)
        self.reset()
        if oversize:
            await self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
        elif (final_reply := srv.final_reply) is not None:
            await self.reply(final_reply)
        else:
            msg = srv._store(mail_from, rcpts, body, self.user, options)
            await self.reply(f"250 2.0.0 OK queued as sandbox-{msg.seq}")
        return True

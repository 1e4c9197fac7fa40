"""One connection to the sandbox SMTP upstream: greeting, EHLO, STARTTLS, AUTH XOAUTH2 /
OAUTHBEARER, MAIL, RCPT, DATA and BDAT (RFC 3030), with the fault switches of its server
(`relay.sandbox.smtp_state.SandboxSmtpState`).
"""

from __future__ import annotations

import asyncio

from relay.errors import ProtocolInputError
from relay.sandbox.lines import BufferedLines, LineTooLong
from relay.sandbox.smtp_state import CONCURRENCY_REFUSAL, MAX_LINE_BYTES, SandboxSmtpState
from relay.sasl import decode_oauthbearer, decode_xoauth2, encode_error_challenge


class SandboxSmtpSession:
    """One connection's state: TLS, EHLO, authenticated user, the current transaction."""

    def __init__(self, server: SandboxSmtpState, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.lines = BufferedLines(reader)
        self.writer = writer
        self.tls = server.tls_mode == "implicit"
        self.helo: str | None = None
        self.user: str | None = None
        self.transcript = server._new_transcript()
        self.turn = 0
        self.replied = True  # the greeting
        self.reset()

    def reset(self) -> None:
        self.mail_from: str | None = None
        self.mail_options: list[str] = []
        self.rcpts: list[str] = []
        self.chunks: bytearray | None = None  # BDAT content so far (None: no BDAT yet)
        self.chunk_count = 0
        self.chunks_failed = False  # a BDAT was refused: the rest of the transaction is discarded

    async def reply(self, text: str) -> None:
        if (delay_s := self.server.delay_s) > 0:
            await asyncio.sleep(delay_s)
        self.writer.write(text.encode("utf-8") + b"\r\n")
        self.replied = True
        await self.writer.drain()

    def next_read(self) -> None:
        """Called before reading client input: a new client turn starts when everything read so
        far was answered and nothing more is buffered."""
        if self.replied and not self.lines.buf:
            self.turn += 1
        self.replied = False

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
            self.next_read()
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
        last = verb == "BDAT" and arg.upper().endswith("LAST")
        self.server._record(self.transcript, self.turn, "BDAT LAST" if last else verb)
        if verb == "QUIT":
            await self.reply("221 2.0.0 closing connection")
            return False
        handler = {"EHLO": self.ehlo, "HELO": self.helo_cmd, "STARTTLS": self.starttls, "AUTH": self.auth,
                   "MAIL": self.mail, "RCPT": self.rcpt, "DATA": self.data, "BDAT": self.bdat}.get(verb)
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
        exts += [f"SIZE {self.server.max_message_bytes}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if self.server.advertise_chunking:
            exts.append("CHUNKING")
        if self.server.advertise_pipelining:
            exts.append("PIPELINING")
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
            srv._session_started(creds.user)
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
        mail_reply = self.server.take_mail_reply()  # read once: tests flip switches between commands
        if mail_reply is not None:
            await self.reply(mail_reply)
            if not mail_reply.startswith("2"):
                return not mail_reply.startswith("421")  # 421: closing the channel (RFC 5321 3.8)
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
        if self.chunks is not None:
            await self.reply("503 5.5.1 DATA after BDAT in the same transaction; RSET first")
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

        self.next_read()
        body, oversize = await self.lines.read_dot_terminated(srv.max_message_bytes, keep_going)
        if body is None:
            self.writer.transport.abort()
            return False
        srv._record(self.transcript, self.turn, ".")
        await self.finish_message(None if oversize else body)
        return True

    async def finish_message(self, body: bytes | None) -> None:
        """End the transaction: store ``body`` and say 250 (or ``final_reply``); None: too big."""
        srv = self.server
        mail_from, rcpts, options = self.mail_from, tuple(self.rcpts), tuple(self.mail_options)
        self.reset()
        if body is None:
            await self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
        elif (final_reply := srv.final_reply) is not None:
            await self.reply(final_reply)
        elif self.user is not None and srv.over_session_limit(self.user):
            srv.count("concurrency_refusals")
            await self.reply(CONCURRENCY_REFUSAL.format(host=srv.hostname))
        else:
            assert mail_from is not None
            msg = srv._store(mail_from, rcpts, body, self.user, options)
            await self.reply(f"250 2.0.0 OK queued as sandbox-{msg.seq}")

    async def bdat(self, arg: str) -> bool:
        """RFC 3030: ``BDAT <size> [LAST]``, then exactly <size> octets (read even when refused)."""
        parsed = _bdat_args(arg)
        if parsed is None:
            await self.reply("501 5.5.4 Syntax: BDAT <size> [LAST]")
            return False  # the octets that follow cannot be told from commands: give up
        size, last = parsed
        chunk = await self.read_chunk(size)
        if chunk is None:
            self.writer.transport.abort()
            return False
        if self.mail_from is None or not self.rcpts:
            await self.reply("503 5.5.1 Need MAIL and RCPT first")
            return True
        self.chunk_count += 1
        if self.chunks is None:
            self.chunks = bytearray()
        if not self.chunks_failed:
            await self.take_chunk(chunk, last)
        elif last:
            self.reset()
            await self.reply("554 5.5.0 Message discarded: an earlier BDAT failed")
        else:
            await self.reply("503 5.5.1 An earlier BDAT failed; RSET first")
        return True

    async def take_chunk(self, chunk: bytes, last: bool) -> None:
        """Keep a chunk (or refuse it by fault switch or size); LAST ends the transaction."""
        srv = self.server
        assert self.chunks is not None
        refusal = srv.bdat_replies.get(self.chunk_count)
        if refusal is None and len(self.chunks) + len(chunk) > srv.max_message_bytes:
            refusal = "552 5.3.4 Message size exceeds fixed maximum message size"
        if refusal is not None and not refusal.startswith("2"):
            if last:
                self.reset()
            else:
                self.chunks_failed = True
            await self.reply(refusal)
            return
        self.chunks += chunk
        if last:
            await self.finish_message(bytes(self.chunks))
        else:
            await self.reply(refusal or f"250 2.0.0 {len(chunk)} octets received")

    async def read_chunk(self, size: int) -> bytes | None:
        """Exactly ``size`` octets (None at EOF, or when ``drop_after_data_bytes`` strikes)."""
        limit = self.server.drop_after_data_bytes
        before = len(self.chunks or b"")
        buf = self.lines.buf
        data = bytearray(buf[:size])
        del buf[:size]
        while len(data) < size:
            if limit is not None and before + len(data) >= limit:
                return None
            more = await self.lines.reader.read(min(size - len(data), 1 << 20))
            if not more:
                return None
            data += more
        if limit is not None and before + size >= limit:
            return None
        return bytes(data)


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


def _bdat_args(arg: str) -> tuple[int, bool] | None:
    """``"<size> [LAST]"`` -> (size, last); None on a syntax error."""
    words = arg.split()
    if not 1 <= len(words) <= 2 or not (words[0].isascii() and words[0].isdigit()):
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return int(words[0]), len(words) == 2

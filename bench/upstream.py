"""A fast TLS + XOAUTH2 upstream for benchmarks: SMTP (STARTTLS), POP3 and IMAP (TLS on connect), token HTTP.

Built so it is never the bottleneck: DATA is read in bulk with ``readuntil``, BDAT chunks (RFC 3030
CHUNKING) by count with ``readexactly``, RETR answers are pre-built and written in one call. Runs in
its own process (``python -m bench.upstream``), prints its ports as one JSON line, and serves until
its stdin closes. Optional latency (``/control/config``) emulates a distant provider: each reply is
written that much later while the server goes on reading, so a client pays it once per round trip
however many commands it pipelines (as over a real network).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import ssl
import sys

from bench.content import envelope_digest, unstuff
from bench.tokenhttp import TokenHttpServer
from bench.upstream_state import UpstreamState
from bench.wire import read_dot_terminated, set_nodelay
from relay.errors import ProtocolInputError
from relay.sasl import decode_xoauth2, encode_error_challenge
from relay.tlsutil import server_context

READ_LIMIT = 64 * 1024 * 1024  # the whole of a big message may sit in the buffer before its end
MAX_MESSAGE_BYTES = 100 * 1024 * 1024
BACKLOG = 4096
_ADDR = re.compile(rb"<([^>]*)>")


def raise_fd_limit() -> None:
    """Allow as many open sockets as the hard limit permits (1000-session cells need ~3000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Session:
    """Shared I/O helpers: one reply = one write, the configured latency after the command."""

    def __init__(self, state: UpstreamState, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.state = state
        self.reader = reader
        self.writer = writer
        self._delayed: asyncio.Queue[tuple[float, bytes]] | None = None
        self._sender: asyncio.Task[None] | None = None

    async def send(self, data: bytes) -> None:
        """Write a reply; with latency set, a sender task writes it that much later (in order)."""
        if not self.state.latency_s and self._delayed is None:
            self.writer.write(data)
            await self.writer.drain()
            return
        loop = asyncio.get_running_loop()
        if self._delayed is None:
            self._delayed = asyncio.Queue()
            self._sender = loop.create_task(self._send_delayed(self._delayed))
        self._delayed.put_nowait((loop.time() + self.state.latency_s, data))

    async def flush(self) -> None:
        """Wait until every delayed reply is written (before STARTTLS and before closing)."""
        if self._delayed is not None:
            await self._delayed.join()

    def stop(self) -> None:
        """Stop the delayed-reply sender, if any."""
        if self._sender is not None:
            self._sender.cancel()

    async def _send_delayed(self, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            try:
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, ssl.SSLError):
                self.writer.transport.abort()  # the session's next read fails and ends it
            finally:
                queue.task_done()

    async def line(self) -> bytes:
        return await self.reader.readuntil(b"\n")

    def check_token(self, b64: bytes) -> bool:
        try:
            creds = decode_xoauth2(b64.strip())
        except ProtocolInputError:
            return False
        return self.state.token_valid(creds.token)


class SmtpSession(_Session):
    """One SMTP connection: EHLO, STARTTLS, AUTH XOAUTH2, MAIL/RCPT/DATA or BDAT, RSET, NOOP, QUIT."""

    def __init__(self, state: UpstreamState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 tls: ssl.SSLContext) -> None:
        super().__init__(state, reader, writer)
        self.tls_context = tls
        self.tls = False
        self.authed = False
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.chunks: list[bytes] = []  # BDAT content of the current transaction

    def reset(self) -> None:
        self.mail_from, self.rcpts, self.chunks = None, [], []

    def ehlo(self) -> bytes:
        caps = [b"bench.upstream", b"PIPELINING", b"CHUNKING", b"SIZE %d" % MAX_MESSAGE_BYTES, b"8BITMIME",
                b"ENHANCEDSTATUSCODES", b"SMTPUTF8"]
        caps.append(b"AUTH XOAUTH2" if self.tls else b"STARTTLS")
        return b"".join(b"250-" + c + b"\r\n" for c in caps[:-1]) + b"250 " + caps[-1] + b"\r\n"

    async def run(self) -> None:
        self.state.counts["smtp_connections"] += 1
        await self.send(b"220 bench.upstream ESMTP ready\r\n")
        while True:
            line = await self.line()
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.reset()
                await self.send(self.ehlo() if verb == b"EHLO" else b"250 bench.upstream\r\n")
            elif verb == b"STAR":
                if self.tls:
                    await self.send(b"503 5.5.1 TLS already active\r\n")
                    continue
                await self.send(b"220 2.0.0 Ready to start TLS\r\n")
                await self.flush()
                await self.writer.start_tls(self.tls_context)
                self.tls, self.authed = True, False
            elif verb == b"AUTH":
                await self.auth(line)
            elif verb == b"MAIL":
                await self.mail(line)
            elif verb == b"RCPT":
                await self.rcpt(line)
            elif verb == b"DATA":
                await self.data()
            elif verb == b"BDAT":
                await self.bdat(line)
            elif verb in (b"RSET", b"NOOP"):
                if verb == b"RSET":
                    self.reset()
                await self.send(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                await self.send(b"221 2.0.0 Bye\r\n")
                await self.flush()
                return
            else:
                await self.send(b"500 5.5.1 Unknown command\r\n")

    async def auth(self, line: bytes) -> None:
        parts = line.split()
        if not self.tls:
            await self.send(b"538 5.7.11 Encryption required\r\n")
            return
        if len(parts) < 2 or parts[1].upper() != b"XOAUTH2":
            await self.send(b"504 5.5.4 Unrecognized authentication type\r\n")
            return
        if len(parts) >= 3:
            response = parts[2]
        else:
            await self.send(b"334 \r\n")
            response = await self.line()
        if self.check_token(response):
            self.authed = True
            self.state.counts["smtp_auths"] += 1
            await self.send(b"235 2.7.0 Authentication successful\r\n")
            return
        self.state.counts["smtp_auth_failures"] += 1
        await self.send(b"334 " + encode_error_challenge().encode() + b"\r\n")
        await self.line()
        await self.send(b"535 5.7.8 Username and Password not accepted\r\n")

    async def mail(self, line: bytes) -> None:
        match = _ADDR.search(line)
        if not self.authed:
            await self.send(b"530 5.7.0 Authentication required\r\n")
        elif match is None:
            await self.send(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
        else:
            self.reset()
            self.mail_from = match.group(1).decode()
            await self.send(b"250 2.1.0 OK\r\n")

    async def rcpt(self, line: bytes) -> None:
        match = _ADDR.search(line)
        if self.mail_from is None or match is None:
            await self.send(b"503 5.5.1 MAIL first\r\n")
        else:
            self.rcpts.append(match.group(1).decode())
            await self.send(b"250 2.1.5 OK\r\n")

    async def data(self) -> None:
        if self.mail_from is None or not self.rcpts:
            await self.send(b"503 5.5.1 RCPT first\r\n")
            return
        await self.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        wire = await read_dot_terminated(self.reader)
        await self.deliver(unstuff(wire))

    async def bdat(self, line: bytes) -> None:
        """``BDAT <size> [LAST]``: read exactly <size> octets; LAST delivers the chunks joined."""
        parts = line.split()
        if not 2 <= len(parts) <= 3 or not parts[1].isdigit() or parts[2:] not in ([], [b"LAST"]):
            raise ConnectionError("malformed BDAT: the chunk cannot be told from commands")
        chunk = await self.reader.readexactly(int(parts[1]))
        if self.mail_from is None or not self.rcpts:
            await self.send(b"503 5.5.1 RCPT first\r\n")
            return
        self.chunks.append(chunk)
        if len(parts) == 2:
            await self.send(b"250 2.0.0 %d octets received\r\n" % len(chunk))
            return
        await self.deliver(b"".join(self.chunks))

    async def deliver(self, content: bytes) -> None:
        """Record the message (digest over envelope and unstuffed content) and say 250."""
        assert self.mail_from is not None
        self.state.delivered.append(envelope_digest(self.mail_from, self.rcpts, content))
        self.state.counts["smtp_messages"] += 1
        self.state.counts["smtp_bytes"] += len(content)
        self.reset()
        await self.send(b"250 2.0.0 OK queued as %d\r\n" % len(self.state.delivered))


class Pop3Session(_Session):
    """One POP3 connection (TLS on connect): CAPA, AUTH XOAUTH2, STAT/LIST/UIDL/RETR/TOP/DELE, QUIT."""

    CAPA = (b"+OK Capability list follows\r\nUSER\r\nSASL XOAUTH2\r\nUIDL\r\nTOP\r\nRESP-CODES\r\n"
            b"AUTH-RESP-CODE\r\nPIPELINING\r\n.\r\n")

    async def run(self) -> None:
        self.state.counts["pop3_connections"] += 1
        authed = False
        await self.send(b"+OK bench POP3 ready\r\n")
        while True:
            line = await self.line()
            parts = line.split()
            verb = parts[0].upper() if parts else b""
            if verb == b"CAPA":
                await self.send(self.CAPA)
            elif verb == b"AUTH" and not authed:
                authed = await self.auth(parts)
            elif verb == b"QUIT":
                await self.send(b"+OK Bye\r\n")
                await self.flush()
                return
            elif verb == b"NOOP":
                await self.send(b"+OK\r\n")
            elif not authed:
                await self.send(b"-ERR [AUTH] Authenticate first\r\n")
            else:
                await self.transaction(verb, parts[1:])

    async def auth(self, parts: list[bytes]) -> bool:
        if len(parts) < 2 or parts[1].upper() != b"XOAUTH2":
            await self.send(b"-ERR Unsupported mechanism\r\n")
            return False
        if len(parts) >= 3:
            response = parts[2]
        else:
            await self.send(b"+ \r\n")
            response = await self.line()
        if self.check_token(response):
            self.state.counts["pop3_auths"] += 1
            await self.send(b"+OK User successfully authenticated.\r\n")
            return True
        self.state.counts["pop3_auth_failures"] += 1
        await self.send(b"+ " + encode_error_challenge().encode() + b"\r\n")
        await self.line()
        await self.send(b"-ERR [AUTH] Authentication failed.\r\n")
        return False

    def _index(self, args: list[bytes]) -> int | None:
        box = self.state.mailbox
        try:
            n = int(args[0])
        except (IndexError, ValueError):
            return None
        return n - 1 if 1 <= n <= len(box.retr_wire) else None

    async def transaction(self, verb: bytes, args: list[bytes]) -> None:
        box = self.state.mailbox
        if verb == b"STAT":
            await self.send(b"+OK %d %d\r\n" % (len(box.octets), sum(box.octets)))
        elif verb in (b"LIST", b"UIDL"):
            if args:
                i = self._index(args)
                if i is None:
                    await self.send(b"-ERR No such message\r\n")
                    return
                await self.send(b"+OK %d %s\r\n" % (i + 1, self._listing(verb, i)))
                return
            rows = b"".join(b"%d %s\r\n" % (i + 1, self._listing(verb, i)) for i in range(len(box.octets)))
            await self.send(b"+OK\r\n" + rows + b".\r\n")
        elif verb in (b"RETR", b"TOP"):
            i = self._index(args)
            if i is None:
                await self.send(b"-ERR No such message\r\n")
                return
            if verb == b"RETR":
                self.state.counts["pop3_retr"] += 1
                self.state.counts["pop3_bytes"] += box.octets[i]
                await self.send(box.retr_wire[i])
            else:
                wire = box.retr_wire[i]  # TOP n 0: the header section only
                start = wire.index(b"\r\n") + 2
                end = wire.index(b"\r\n\r\n", start) + 4
                await self.send(b"+OK\r\n" + wire[start:end] + b".\r\n")
        elif verb in (b"DELE", b"RSET"):
            await self.send(b"+OK\r\n")  # deletions are not applied: every session sees the same box
        else:
            await self.send(b"-ERR Unknown command\r\n")

    def _listing(self, verb: bytes, i: int) -> bytes:
        return b"%d" % self.state.mailbox.octets[i] if verb == b"LIST" else b"msg-%d" % (i + 1)


class ImapSession(_Session):
    """One IMAP connection (TLS on connect): CAPABILITY, AUTHENTICATE XOAUTH2 (SASL-IR or after
    ``+``), SELECT, FETCH/UID FETCH n BODY[]/BODY.PEEK[]/RFC822, NOOP, LOGOUT."""

    CAPS = b"IMAP4rev1 SASL-IR AUTH=XOAUTH2 IDLE LITERAL+"

    async def run(self) -> None:
        self.state.counts["imap_connections"] += 1
        authed = False
        await self.send(b"* OK [CAPABILITY " + self.CAPS + b"] bench IMAP ready\r\n")
        while True:
            parts = (await self.line()).split()
            if len(parts) < 2:
                await self.send(b"* BAD Missing tag or command\r\n")
                continue
            tag, verb, args = parts[0], parts[1].upper(), parts[2:]
            if verb == b"CAPABILITY":
                await self.send(b"* CAPABILITY " + self.CAPS + b"\r\n" + tag + b" OK done\r\n")
            elif verb == b"AUTHENTICATE" and not authed:
                authed = await self.auth(tag, args)
            elif verb == b"LOGOUT":
                await self.send(b"* BYE bench IMAP\r\n" + tag + b" OK LOGOUT completed\r\n")
                await self.flush()
                return
            elif verb == b"NOOP":
                await self.send(tag + b" OK NOOP completed\r\n")
            elif not authed:
                await self.send(tag + b" BAD Authenticate first\r\n")
            else:
                await self.selected(tag, verb, args)

    async def auth(self, tag: bytes, args: list[bytes]) -> bool:
        if not args or args[0].upper() != b"XOAUTH2":
            await self.send(tag + b" NO Unsupported mechanism\r\n")
            return False
        if len(args) >= 2:
            response = args[1]
        else:
            await self.send(b"+ \r\n")
            response = await self.line()
        if self.check_token(response):
            self.state.counts["imap_auths"] += 1
            await self.send(tag + b" OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ UIDPLUS] Success\r\n")
            return True
        self.state.counts["imap_auth_failures"] += 1
        await self.send(b"+ " + encode_error_challenge().encode() + b"\r\n")
        await self.line()
        await self.send(tag + b" NO [AUTHENTICATIONFAILED] SASL authentication failed\r\n")
        return False

    async def selected(self, tag: bytes, verb: bytes, args: list[bytes]) -> None:
        box = self.state.mailbox
        if verb in (b"SELECT", b"EXAMINE"):
            await self.send(b"* %d EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n%s OK [READ-WRITE] "
                            b"SELECT completed\r\n" % (len(box.contents), tag))
            return
        uid = verb == b"UID" and bool(args) and args[0].upper() == b"FETCH"
        if uid:
            args = args[1:]
        elif verb != b"FETCH":
            await self.send(tag + b" BAD Unknown command\r\n")
            return
        try:
            n = int(args[0])
            content = box.contents[n - 1]
            if n < 1:
                raise IndexError(n)
        except (IndexError, ValueError):
            await self.send(tag + b" NO No such message\r\n")
            return
        self.state.counts["imap_fetch"] += 1
        self.state.counts["imap_bytes"] += len(content)
        head = b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (n, n, len(content))
        await self.send(head + content + b")\r\n" + tag + b" OK FETCH completed\r\n")


async def _run_session(session: SmtpSession | Pop3Session | ImapSession) -> None:
    set_nodelay(session.writer)
    try:
        await session.run()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
        session.state.counts["dropped_sessions"] += 1
    finally:
        session.stop()
        session.writer.transport.abort()


async def serve(cert: str, key: str) -> None:
    """Start the three servers on loopback port 0, print their ports, serve until stdin closes."""
    state = UpstreamState()
    ctx = server_context(cert, key)  # type: ignore[arg-type]
    smtp = await asyncio.start_server(
        lambda r, w: _run_session(SmtpSession(state, r, w, ctx)), "127.0.0.1", 0,
        limit=READ_LIMIT, backlog=BACKLOG)
    pop3 = await asyncio.start_server(
        lambda r, w: _run_session(Pop3Session(state, r, w)), "127.0.0.1", 0, ssl=ctx, backlog=BACKLOG)
    imap = await asyncio.start_server(
        lambda r, w: _run_session(ImapSession(state, r, w)), "127.0.0.1", 0, ssl=ctx, backlog=BACKLOG,
        limit=READ_LIMIT)
    http = TokenHttpServer(state)
    await http.start()
    ports = {"smtp": smtp.sockets[0].getsockname()[1], "pop3": pop3.sockets[0].getsockname()[1],
             "imap": imap.sockets[0].getsockname()[1], "http": http.port}
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes stdin (or dies) to stop us
    for server in (smtp, pop3, imap):
        server.close()
    await http.stop()


def main() -> None:
    """``python -m bench.upstream --cert FILE --key FILE``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.cert, args.key))


if __name__ == "__main__":
    main()

"""`SandboxPop3Server`: an upstream POP3 server with XOAUTH2 only, like Exchange Online / Gmail.

TLS on connect (995-style) or STLS (RFC 2595); AUTH XOAUTH2 / OAUTHBEARER checked against the
sandbox OAuth provider; full RFC 1939 semantics with per-user maildrops, locking ([IN-USE]) and
deletions applied only on QUIT. Messages are streamed in chunks, so large ones stay cheap.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from relay.errors import ProtocolInputError
from relay.sandbox.lines import CHUNK_BYTES, BufferedLines, LineTooLong
from relay.sandbox.loop import LoopbackServer
from relay.sandbox.smtp_upstream import token_matcher
from relay.sasl import decode_oauthbearer, decode_xoauth2, encode_error_challenge
from relay.tlsutil import server_context

MAX_LINE_BYTES = 12288 + 2
Pop3TlsMode = Literal["implicit", "starttls", "none"]


def stuff_chunk(chunk: bytes, at_line_start: bool) -> bytes:
    """Byte-stuff a piece of a message: every line starting with '.' gets one more '.'."""
    out = chunk.replace(b"\n.", b"\n..")
    return b"." + out if at_line_start and out.startswith(b".") else out


def top_of(data: bytes, body_lines: int) -> bytes:
    """The header block, the blank line and the first ``body_lines`` lines of the body (TOP)."""
    idx = data.find(b"\r\n\r\n")
    if idx < 0:
        return data
    head, body = data[: idx + 4], data[idx + 4:]
    pos = 0
    for _ in range(body_lines):
        j = body.find(b"\n", pos)
        if j < 0:
            pos = len(body)
            break
        pos = j + 1
    return head + body[:pos]


class SandboxPop3Server(LoopbackServer):
    """A loopback POP3 server with per-user maildrops and fault switches.

    ``validate_token(token) -> mailbox | None`` is usually `SandboxOAuthProvider.validate_access_token`;
    ``authorize(token, mailbox) -> bool``, when given, decides instead.
    """

    name = "pop3"

    def __init__(
        self,
        validate_token: Callable[[str], str | None],
        cert_file: Path,
        key_file: Path,
        *,
        port: int = 0,
        tls_mode: Pop3TlsMode = "implicit",
        initial_response_allowed: bool = True,
        authorize: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._tls = server_context(cert_file, key_file, "sandbox.pop3")
        super().__init__(port=port, ssl_context=self._tls if tls_mode == "implicit" else None)
        self.tls_mode = tls_mode
        self.initial_response_allowed = initial_response_allowed
        self.authorize = authorize or token_matcher(validate_token)
        self._maildrops: dict[str, list[tuple[str, bytes]]] = {}
        self._locked: set[str] = set()
        self._uid_seq = itertools.count(1)
        self.clear_faults()

    def clear_faults(self) -> None:
        """Reset every fault switch to normal behaviour."""
        self.err_on: dict[str, str] = {}
        self.drop_mid_retr_after_bytes: int | None = None
        self.delay_s = 0.0
        self.never_greet = False

    # --- maildrops ------------------------------------------------------------------------------

    def deliver(self, user: str, message: bytes) -> str:
        """Append ``message`` (CRLF line endings expected) to ``user``'s maildrop; return its UID."""
        uid = f"sbx-{next(self._uid_seq):08d}"
        with self.lock:
            self._maildrops.setdefault(user.lower(), []).append((uid, bytes(message)))
        return uid

    def mailbox(self, user: str) -> list[tuple[str, bytes]]:
        """The (uid, bytes) messages in ``user``'s maildrop, oldest first."""
        with self.lock:
            return list(self._maildrops.get(user.lower(), []))

    def is_locked(self, user: str) -> bool:
        """True while a session holds ``user``'s maildrop in TRANSACTION state."""
        with self.lock:
            return user.lower() in self._locked

    def _lock_maildrop(self, user: str) -> list[tuple[str, bytes]] | None:
        with self.lock:
            key = user.lower()
            if key in self._locked:
                return None
            self._locked.add(key)
            return list(self._maildrops.get(key, []))

    def _unlock_maildrop(self, user: str, delete_uids: set[str]) -> None:
        with self.lock:
            key = user.lower()
            self._locked.discard(key)
            if delete_uids:
                self._maildrops[key] = [m for m in self._maildrops.get(key, []) if m[0] not in delete_uids]
                self._counters["dele_committed"] += len(delete_uids)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one POP3 session; release the maildrop lock however it ends."""
        session = _Pop3Session(self, reader, writer)
        try:
            await session.run()
        finally:
            session.release(commit=False)


class _Pop3Session:
    """One connection: AUTHORIZATION -> TRANSACTION -> UPDATE."""

    def __init__(self, server: SandboxPop3Server, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.lines = BufferedLines(reader)
        self.writer = writer
        self.tls = server.tls_mode == "implicit"
        self.user: str | None = None  # set once in TRANSACTION (maildrop locked)
        self.msgs: list[tuple[str, bytes]] = []
        self.deleted: set[int] = set()
        self._released = False

    def release(self, *, commit: bool) -> None:
        """Unlock the maildrop once; with ``commit`` (QUIT: the UPDATE state) apply the deletions."""
        if self.user is None or self._released:
            return
        self._released = True
        uids = {self.msgs[i][0] for i in self.deleted} if commit else set()
        self.server._unlock_maildrop(self.user, uids)

    async def reply(self, text: str) -> None:
        if (delay_s := self.server.delay_s) > 0:
            await asyncio.sleep(delay_s)
        self.writer.write(text.encode("utf-8") + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        if self.server.never_greet:
            while await self.lines.readline(MAX_LINE_BYTES) is not None:
                pass
            return
        await self.reply("+OK Sandbox POP3 ready.")
        while True:
            try:
                raw = await self.lines.readline(MAX_LINE_BYTES)
            except LineTooLong:
                await self.reply("-ERR Line too long")
                continue
            if raw is None:
                return
            verb, _, arg = raw.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            verb = verb.upper()
            injected = self.server.err_on.get(verb)
            if injected is not None:
                await self.reply(injected)
                continue
            if not await self.dispatch(verb, arg.strip()):
                return

    async def dispatch(self, verb: str, arg: str) -> bool:
        """Handle one command; False ends the session."""
        if verb == "QUIT":
            if self.user is not None:
                # UPDATE happens before the +OK, so a client reconnecting at once never sees [IN-USE].
                self.release(commit=True)
                self.server.count("quit_update")
            await self.reply("+OK Sandbox POP3 signing off.")
            return False
        if verb == "CAPA":
            await self.capa()
        elif verb == "NOOP" and self.user is not None:
            await self.reply("+OK")
        elif self.user is None:
            await self.authorization(verb, arg)
        else:
            await self.transaction(verb, arg)
        return True

    async def capa(self) -> None:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "SASL XOAUTH2 OAUTHBEARER"]
        if self.server.tls_mode == "starttls" and not self.tls:
            caps.append("STLS")
        caps.append("IMPLEMENTATION sandbox")
        await self.reply("+OK Capability list follows\r\n" + "\r\n".join(caps) + "\r\n.")

    async def authorization(self, verb: str, arg: str) -> None:
        if verb == "STLS":
            if self.tls or self.server.tls_mode != "starttls":
                await self.reply("-ERR TLS already active" if self.tls else "-ERR STLS not supported")
                return
            await self.reply("+OK Begin TLS negotiation")
            self.lines.discard_buffer()
            await self.writer.start_tls(self.server._tls)
            self.tls = True
        elif verb == "AUTH":
            await self.auth(arg)
        elif verb in ("USER", "PASS", "APOP"):
            await self.reply("-ERR [AUTH] Plaintext login is disabled; use AUTH XOAUTH2.")
        else:
            await self.reply("-ERR Unknown command or not allowed before authentication.")

    async def auth(self, arg: str) -> None:
        srv = self.server
        if not self.tls and srv.tls_mode == "starttls":
            await self.reply("-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.")
            return
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if not mech:
            await self.reply("+OK\r\nXOAUTH2\r\nOAUTHBEARER\r\n.")
            return
        if mech not in ("XOAUTH2", "OAUTHBEARER"):
            await self.reply("-ERR [AUTH] Unsupported authentication mechanism.")
            return
        response = initial.strip()
        if response and not srv.initial_response_allowed:
            await self.reply("-ERR Protocol error")
            return
        if not response:
            await self.reply("+ ")
            line = await self._read_auth_line()
            if line is None:
                return
            response = line
        elif response == "=":
            response = ""
        if response == "*":
            await self.reply("-ERR [AUTH] Authentication aborted.")
            return
        try:
            creds = decode_xoauth2(response) if mech == "XOAUTH2" else decode_oauthbearer(response)
        except ProtocolInputError:
            await self.reply("-ERR [AUTH] Invalid base64 data in continued response.")
            return
        if not creds.user or not srv.authorize(creds.token, creds.user):
            srv.count("auth_failed")
            await self.reply("+ " + encode_error_challenge())
            if await self._read_auth_line() is not None:
                await self.reply("-ERR [AUTH] Authentication failed.")
            return
        msgs = srv._lock_maildrop(creds.user)
        if msgs is None:
            srv.count("in_use")
            await self.reply("-ERR [IN-USE] Mailbox is locked by another POP3 session.")
            return
        srv.count("auth_ok")
        self.user, self.msgs = creds.user, msgs
        await self.reply("+OK User successfully authenticated.")

    async def _read_auth_line(self) -> str | None:
        try:
            raw = await self.lines.readline(MAX_LINE_BYTES)
        except LineTooLong:
            return "*"
        return None if raw is None else raw.decode("ascii", "replace").rstrip("\r\n")

    def _msg_number(self, arg: str) -> int | None:
        """0-based index of a live message named by ``arg`` (1-based), else None."""
        if not arg.isdigit():
            return None
        i = int(arg) - 1
        if i < 0 or i >= len(self.msgs) or i in self.deleted:
            return None
        return i

    def _live(self) -> list[int]:
        return [i for i in range(len(self.msgs)) if i not in self.deleted]

    async def transaction(self, verb: str, arg: str) -> None:
        args = arg.split()
        if verb == "STAT":
            live = self._live()
            await self.reply(f"+OK {len(live)} {sum(len(self.msgs[i][1]) for i in live)}")
        elif verb in ("LIST", "UIDL"):
            def item(i: int) -> str:
                return f"{i + 1} {len(self.msgs[i][1]) if verb == 'LIST' else self.msgs[i][0]}"
            if args:
                i = self._msg_number(args[0])
                await self.reply(f"+OK {item(i)}" if i is not None else "-ERR No such message")
            else:
                lines = [item(i) for i in self._live()]
                await self.reply("\r\n".join([f"+OK {len(lines)} messages", *lines, "."]))
        elif verb in {"RETR", "TOP"}:
            i = self._msg_number(args[0]) if args else None
            if i is None or (verb == "TOP" and (len(args) < 2 or not args[1].isdigit())):
                await self.reply("-ERR No such message" if i is None else "-ERR Syntax: TOP msg lines")
                return
            data = self.msgs[i][1]
            self.server.count(verb.lower())
            if verb == "TOP":
                await self.send_multiline("+OK Top of message follows", top_of(data, int(args[1])))
            else:
                await self.send_multiline(f"+OK {len(data)} octets", data)
        elif verb == "DELE":
            i = self._msg_number(args[0]) if args else None
            if i is None:
                await self.reply("-ERR No such message")
                return
            self.deleted.add(i)
            await self.reply(f"+OK Message {i + 1} deleted.")
        elif verb == "RSET":
            self.deleted.clear()
            await self.reply("+OK")
        else:
            await self.reply("-ERR Unknown command.")

    async def send_multiline(self, first: str, data: bytes) -> None:
        """Send ``first`` then ``data`` byte-stuffed, in chunks with drain, then the final dot."""
        if (delay_s := self.server.delay_s) > 0:
            await asyncio.sleep(delay_s)
        w = self.writer
        w.write(first.encode() + b"\r\n")
        budget = self.server.drop_mid_retr_after_bytes
        view = memoryview(data)
        for pos in range(0, len(data), CHUNK_BYTES):
            at_line_start = pos == 0 or data[pos - 1] == 0x0A
            out = stuff_chunk(bytes(view[pos: pos + CHUNK_BYTES]), at_line_start)
            if budget is not None and len(out) >= budget:
                w.write(out[:budget])
                w.close()  # flushes what was written, then closes: the client sees EOF mid-message
                raise ConnectionAbortedError("drop_mid_retr_after_bytes")
            if budget is not None:
                budget -= len(out)
            w.write(out)
            await w.drain()
        w.write(b".\r\n" if data.endswith(b"\r\n") or not data else b"\r\n.\r\n")
        await w.drain()

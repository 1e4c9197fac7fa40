"""Asyncio load generator on raw streams: SMTP submission, POP3 and IMAP retrieval sessions.

A `Target` says how to reach a server and log in: ``direct`` (the upstream: STARTTLS/TLS and
AUTH XOAUTH2 with a bearer token) or ``relay`` (a local proxy, the relay or emailproxy: AUTH PLAIN /
USER+PASS / IMAP LOGIN with a local login). `run_smtp` / `run_pop3` / `run_imap` start C
sessions at once and collect a `LoadResult`;
`verify_smtp` then checks at the upstream that every acknowledged message arrived exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from bench.content import MessageFactory, unstuff
from bench.procstat import self_cpu_seconds
from bench.stats import LoadResult
from bench.wire import read_dot_terminated, set_nodelay
from relay.sasl import encode_plain, encode_xoauth2

MAIL_FROM = "bench@example.com"
RCPT_TO = "sink@example.com"
Mode = Literal["direct", "relay"]


@dataclass(frozen=True)
class Target:
    """Where and how sessions log in."""

    name: str
    mode: Mode
    host: str
    smtp_port: int
    pop3_port: int
    user: str  # direct: the XOAUTH2 mailbox; relay: the local login (emailproxy: the mailbox)
    secret: str  # direct: the access token; relay: the local password
    tls: ssl.SSLContext | None = None  # direct: trusts the upstream's certificate
    smtp_starttls: bool = False  # relay: also use STARTTLS towards the relay
    imap_port: int = 0  # 0: this target has no IMAP (its IMAP cells are skipped)


@dataclass(frozen=True)
class LoadSpec:
    """One cell: C sessions x M messages of S bytes (SMTP) or RETR/FETCH of N messages (POP3/IMAP)."""

    protocol: Literal["smtp", "pop3", "imap"]
    sessions: int
    messages: int
    size: int
    session_timeout_s: float = 60.0
    one_connection_per_message: bool = False  # SMTP: connect, log in, send one, QUIT, repeat
    tag: str = "run"


class SessionError(Exception):
    """A server answered something unexpected; the message names the stage."""


async def _reply(reader: asyncio.StreamReader, stage: str, expect: int) -> bytes:
    """Read one (multi-line) SMTP reply; SessionError unless its code is ``expect``."""
    while True:
        line = await reader.readuntil(b"\n")
        if line[3:4] != b"-":
            break
    if not line[:3].isdigit() or int(line[:3]) != expect:
        raise SessionError(f"{stage}: {line[:60].decode('latin-1').strip()}")
    return line


async def _status(reader: asyncio.StreamReader, stage: str, prefix: bytes = b"+OK") -> bytes:
    """Read one POP3 status line; SessionError unless it starts with ``prefix``."""
    line = await reader.readuntil(b"\n")
    if not line.startswith(prefix):
        raise SessionError(f"{stage}: {line[:60].decode('latin-1').strip()}")
    return line


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0) instead of a FIN.

    For sessions that failed or timed out. A FIN would linger and be retransmitted, and a server
    whose listen queue overflowed (SYN cookies) takes a retransmitted FIN as the handshake's last
    ACK: it would accept the dead connection seconds later, in the middle of the next run.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- SMTP --------------------------------------------------------------------------------------

async def _smtp_login(target: Target, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(target.host, target.smtp_port, limit=limit)
    try:
        set_nodelay(writer)
        await _reply(reader, "greeting", 220)
        writer.write(b"EHLO bench.client\r\n")
        await _reply(reader, "EHLO", 250)
        if target.mode == "direct" or target.smtp_starttls:
            writer.write(b"STARTTLS\r\n")
            await _reply(reader, "STARTTLS", 220)
            await writer.start_tls(target.tls or ssl.create_default_context(), server_hostname=target.host)
            writer.write(b"EHLO bench.client\r\n")
            await _reply(reader, "EHLO after TLS", 250)
        if target.mode == "direct":
            writer.write(b"AUTH XOAUTH2\r\n")
            await _reply(reader, "AUTH", 334)
            writer.write(encode_xoauth2(target.user, target.secret).encode() + b"\r\n")
        else:
            writer.write(b"AUTH PLAIN " + encode_plain(target.user, target.secret).encode() + b"\r\n")
        await _reply(reader, "AUTH", 235)
    except BaseException:  # failed, or timed out (cancelled): a hung session must not keep its connection
        _reset(writer)
        raise
    return reader, writer


async def _smtp_send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     factory: MessageFactory, tag: str, result: LoadResult) -> None:
    started = time.perf_counter()
    writer.write(f"MAIL FROM:<{MAIL_FROM}>\r\n".encode())
    await _reply(reader, "MAIL", 250)
    writer.write(f"RCPT TO:<{RCPT_TO}>\r\n".encode())
    await _reply(reader, "RCPT", 250)
    writer.write(b"DATA\r\n")
    await _reply(reader, "DATA", 354)
    writer.writelines(factory.wire(tag))
    writer.write(b".\r\n")
    await writer.drain()
    await _reply(reader, "end of DATA", 250)
    result.latencies_s.append(time.perf_counter() - started)
    result.acked.append(factory.digest(tag))
    result.messages_ok += 1
    result.bytes_ok += factory.size(tag)


async def _smtp_session(target: Target, spec: LoadSpec, factory: MessageFactory, sid: int,
                        result: LoadResult) -> None:
    connections = spec.messages if spec.one_connection_per_message else 1
    per_connection = 1 if spec.one_connection_per_message else spec.messages
    limit = 64 * 1024
    for c in range(connections):
        started = time.perf_counter()
        reader, writer = await _smtp_login(target, limit)
        try:
            result.setup_s.append(time.perf_counter() - started)
            for m in range(per_connection):
                await _smtp_send(reader, writer, factory, f"{spec.tag}-{sid}-{c}-{m}", result)
            writer.write(b"QUIT\r\n")
            await _reply(reader, "QUIT", 221)
        except BaseException:
            _reset(writer)
            raise
        finally:
            writer.transport.abort()


async def run_smtp(target: Target, spec: LoadSpec) -> LoadResult:
    """Run ``spec.sessions`` concurrent SMTP sessions against ``target``."""
    factory = MessageFactory(spec.size, MAIL_FROM, [RCPT_TO])
    return await _run(spec, lambda sid, result: _smtp_session(target, spec, factory, sid, result))


# --- POP3 --------------------------------------------------------------------------------------

async def _pop3_session(target: Target, spec: LoadSpec, digests: list[str], sid: int,
                        result: LoadResult) -> None:
    started = time.perf_counter()
    limit = 2 * spec.size + 64 * 1024
    direct = target.mode == "direct"
    reader, writer = await asyncio.open_connection(
        target.host, target.pop3_port, limit=limit, ssl=target.tls if direct else None,
        server_hostname=target.host if direct else None)
    try:
        set_nodelay(writer)
        await _status(reader, "greeting")
        if direct:
            writer.write(b"AUTH XOAUTH2\r\n")
            await _status(reader, "AUTH", b"+ ")
            writer.write(encode_xoauth2(target.user, target.secret).encode() + b"\r\n")
            await _status(reader, "AUTH")
        else:
            writer.write(f"USER {target.user}\r\n".encode())
            await _status(reader, "USER")
            writer.write(f"PASS {target.secret}\r\n".encode())
            await _status(reader, "PASS")
        result.setup_s.append(time.perf_counter() - started)
        for k in range(spec.messages):
            index = (sid + k) % len(digests)  # sessions start at different messages
            t0 = time.perf_counter()
            writer.write(b"RETR %d\r\n" % (index + 1))
            await _status(reader, "RETR")
            content = unstuff(await read_dot_terminated(reader))
            result.latencies_s.append(time.perf_counter() - t0)
            if hashlib.sha256(content).hexdigest() != digests[index]:
                result.content_mismatches += 1
                continue
            result.messages_ok += 1
            result.bytes_ok += len(content)
        writer.write(b"QUIT\r\n")
        await _status(reader, "QUIT")
    except BaseException:
        _reset(writer)
        raise
    finally:
        writer.transport.abort()


async def run_pop3(target: Target, spec: LoadSpec, digests: list[str]) -> LoadResult:
    """Run ``spec.sessions`` concurrent POP3 sessions, each RETR-ing ``spec.messages`` messages."""
    result = await _run(spec, lambda sid, res: _pop3_session(target, spec, digests, sid, res))
    result.verify = {"checked": result.messages_ok + result.content_mismatches,
                     "mismatches": result.content_mismatches}
    return result


# --- IMAP --------------------------------------------------------------------------------------

async def _tagged(reader: asyncio.StreamReader, tag: bytes, stage: str) -> bytes:
    """Read up to the line tagged ``tag``; SessionError unless it is OK."""
    while True:
        line = await reader.readuntil(b"\n")
        if line.startswith(tag + b" "):
            if line[len(tag) + 1:len(tag) + 3] != b"OK":
                raise SessionError(f"{stage}: {line[:60].decode('latin-1').strip()}")
            return line


async def _imap_fetch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: bytes,
                      number: int) -> bytes:
    """``UID FETCH n BODY.PEEK[]`` and return the literal's bytes."""
    writer.write(tag + b" UID FETCH %d (BODY.PEEK[])\r\n" % number)
    line = await reader.readuntil(b"\n")
    if not (line.startswith(b"* ") and line.endswith(b"}\r\n")):
        raise SessionError(f"FETCH: {line[:60].decode('latin-1').strip()}")
    size = int(line[line.rindex(b"{") + 1:-3])
    content = await reader.readexactly(size)
    await _tagged(reader, tag, "FETCH")
    return content


async def _imap_session(target: Target, spec: LoadSpec, digests: list[str], sid: int,
                        result: LoadResult) -> None:
    started = time.perf_counter()
    direct = target.mode == "direct"
    reader, writer = await asyncio.open_connection(
        target.host, target.imap_port, limit=2 * spec.size + 64 * 1024,
        ssl=target.tls if direct else None, server_hostname=target.host if direct else None)
    try:
        set_nodelay(writer)
        greeting = await reader.readuntil(b"\n")
        if not greeting.startswith(b"* OK"):
            raise SessionError(f"greeting: {greeting[:60].decode('latin-1').strip()}")
        if direct:
            writer.write(b"a AUTHENTICATE XOAUTH2 " + encode_xoauth2(target.user, target.secret).encode()
                         + b"\r\n")
        else:
            writer.write(b'a LOGIN %s "%s"\r\n' % (target.user.encode(), target.secret.encode()))
        await _tagged(reader, b"a", "login")
        writer.write(b"b SELECT INBOX\r\n")
        await _tagged(reader, b"b", "SELECT")
        result.setup_s.append(time.perf_counter() - started)
        for k in range(spec.messages):
            index = (sid + k) % len(digests)
            t0 = time.perf_counter()
            content = await _imap_fetch(reader, writer, b"f%d" % k, index + 1)
            result.latencies_s.append(time.perf_counter() - t0)
            if hashlib.sha256(content).hexdigest() != digests[index]:
                result.content_mismatches += 1
                continue
            result.messages_ok += 1
            result.bytes_ok += len(content)
        writer.write(b"z LOGOUT\r\n")
        await _tagged(reader, b"z", "LOGOUT")
    except BaseException:
        _reset(writer)
        raise
    finally:
        writer.transport.abort()


async def run_imap(target: Target, spec: LoadSpec, digests: list[str]) -> LoadResult:
    """Run ``spec.sessions`` concurrent IMAP sessions, each FETCH-ing ``spec.messages`` messages."""
    result = await _run(spec, lambda sid, res: _imap_session(target, spec, digests, sid, res))
    result.verify = {"checked": result.messages_ok + result.content_mismatches,
                     "mismatches": result.content_mismatches}
    return result


# --- common ------------------------------------------------------------------------------------

async def _run(spec: LoadSpec, session: Callable[[int, LoadResult], Awaitable[None]]) -> LoadResult:
    result = LoadResult(sessions=spec.sessions)

    async def guarded(sid: int) -> None:
        try:
            async with asyncio.timeout(spec.session_timeout_s):
                await session(sid, result)
        except TimeoutError:
            result.hung_sessions += 1
        except SessionError as exc:
            result.failed_sessions += 1
            result.errors[str(exc)] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
            result.failed_sessions += 1
            result.errors[type(exc).__name__] += 1

    cpu0 = self_cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(guarded(sid) for sid in range(spec.sessions)))
    result.wall_s = time.perf_counter() - started
    result.loadgen_cpu_s = self_cpu_seconds() - cpu0
    return result


async def open_idle_smtp(target: Target, n: int, timeout_s: float = 60.0
                         ) -> tuple[list[asyncio.StreamWriter], LoadResult]:
    """Open ``n`` SMTP sessions at once, each logged in (EHLO + AUTH) and then left idle.

    Returns the open writers (close them with `close_all`) and the setup times and failures.
    """
    writers: list[asyncio.StreamWriter] = []

    async def one(sid: int, res: LoadResult) -> None:
        started = time.perf_counter()
        _reader, writer = await _smtp_login(target, 64 * 1024)
        writers.append(writer)
        res.setup_s.append(time.perf_counter() - started)

    spec = LoadSpec("smtp", n, 0, 0, session_timeout_s=timeout_s)
    result = await _run(spec, one)
    return writers, result


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    """Drop idle sessions at once."""
    for writer in writers:
        writer.transport.abort()


def verify_smtp(result: LoadResult, delivered: list[str]) -> dict[str, int]:
    """Compare acknowledged digests with what the upstream recorded; store and return the counts.

    ``missing``: acknowledged but never delivered; ``duplicates``: delivered more than once;
    ``unacknowledged``: delivered although the client got no 250 (e.g. a hung session).
    """
    acked = Counter(result.acked)
    got = Counter(delivered)
    result.verify = {
        "checked": len(result.acked),
        "missing": sum((acked - got).values()),
        "duplicates": sum(n - 1 for n in got.values() if n > 1),
        "unacknowledged": sum((got - acked).values()),
    }
    return result.verify


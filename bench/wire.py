"""Small stream helpers shared by the bench upstream and the load generator."""

from __future__ import annotations

import asyncio
import socket


async def read_dot_terminated(reader: asyncio.StreamReader) -> bytes:
    """Read a dot-terminated block (SMTP DATA, POP3 multi-line body) in bulk.

    Returns the wire bytes without the final ``.\\r\\n`` (still dot-stuffed). Call it right after
    the line that opened the block, so a lone ``.\\r\\n`` means an empty block.
    """
    parts: list[bytes] = []
    tail = b"\r\n"
    while True:
        chunk = await reader.readuntil(b".\r\n")
        parts.append(chunk)
        tail = (tail + chunk)[-5:]
        if tail == b"\r\n.\r\n":
            return b"".join(parts)[:-3]


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Disable Nagle on a TCP stream: request/reply protocols must not wait 40 ms."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

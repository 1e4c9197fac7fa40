"""Buffered line and SMTP-DATA reading over an asyncio StreamReader, shared by the sandbox upstreams.

The buffer is ours (not the StreamReader's) so a DATA body can be scanned in large chunks and the
bytes pipelined after it stay available for the next command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

CHUNK_BYTES = 1 << 16
DATA_TERMINATOR = b"\r\n.\r\n"


class LineTooLong(Exception):
    """A line exceeded the allowed length; the rest of it up to LF has been discarded."""


class BufferedLines:
    """Reads CRLF lines and dot-terminated data blocks from a StreamReader."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    def discard_buffer(self) -> None:
        """Drop buffered bytes (after STARTTLS/STLS: plaintext sent before the handshake is not trusted)."""
        self.buf.clear()

    async def readline(self, max_bytes: int) -> bytes | None:
        """Return the next line including its line ending; None at EOF.

        Raises LineTooLong (after skipping the whole line) when it is longer than ``max_bytes``.
        """
        scanned = 0
        too_long = False
        while True:
            idx = self.buf.find(b"\n", scanned)
            if idx >= 0:
                line = bytes(self.buf[: idx + 1])
                del self.buf[: idx + 1]
                if too_long or len(line) > max_bytes:
                    raise LineTooLong
                return line
            if len(self.buf) > max_bytes:
                too_long = True
                self.buf.clear()
            scanned = len(self.buf)
            chunk = await self.reader.read(CHUNK_BYTES)
            if not chunk:
                return None
            self.buf += chunk

    async def read_dot_terminated(
        self, keep_limit: int, on_bytes: Callable[[int], bool] | None = None
    ) -> tuple[bytes | None, bool]:
        """Read an SMTP DATA block up to CRLF.CRLF; return (dot-unstuffed body, oversize).

        The body keeps its CRLFs and ends with the CRLF before the final dot. Once more than about
        ``keep_limit`` bytes arrived the content is dropped (oversize=True) but still read to the
        end (body b""). ``on_bytes(total_received)`` may return False to stop (body None).
        At EOF: (None, ...).
        """
        data = bytearray(b"\r\n")  # the CRLF that ended the DATA command: allows an empty body
        data += self.buf
        self.buf.clear()
        received = len(data) - 2
        scan_from = 0
        oversize = False
        trim_at = keep_limit + keep_limit // 8 + 4096
        while True:
            if on_bytes is not None and not on_bytes(received):
                return None, oversize
            idx = data.find(DATA_TERMINATOR, scan_from)
            if idx >= 0:
                self.buf += data[idx + len(DATA_TERMINATOR):]
                if oversize:
                    return b"", True
                body = bytes(data[: idx + 2]).replace(b"\r\n.", b"\r\n")[2:]
                return (b"", True) if len(body) > keep_limit else (body, False)
            if len(data) > trim_at:
                oversize = True
                del data[:-4]
            scan_from = max(0, len(data) - 4)
            chunk = await self.reader.read(CHUNK_BYTES)
            if not chunk:
                return None, oversize
            data += chunk
            received += len(chunk)

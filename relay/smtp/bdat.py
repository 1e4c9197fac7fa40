"""Message content as one BDAT chunk (RFC 3030 CHUNKING): one upstream write for a small message.

The client sends DATA to the relay (dot-stuffed wire bytes, framed by `relay.smtp.dataframe`); a
message up to `CHUNK_BYTES` goes upstream as a single ``BDAT <n> LAST`` with the *unstuffed*
content, so there is no DATA/354 round trip. A larger message goes by DATA instead (see
`relay.smtp.datasink`): streamed as it arrives, with no unstuffing copy and no per-chunk replies,
DATA is cheaper once the round trip BDAT saves is small next to the transfer (measured, 5 MB:
relay CPU 22.5 -> ~17 ms), so there is no multi-chunk BDAT path. `Unstuffer` (pure) removes the
stuffing dots across arbitrary chunk splits.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from relay.smtp.reply import SmtpReply
from relay.smtp.upstream import UpstreamSmtpSession

CHUNK_BYTES = 256 * 1024
"""The largest message sent as one BDAT LAST chunk (content buffered per session until then)."""


class Unstuffer:
    """Undo SMTP dot-stuffing (RFC 5321 4.5.2) on a stream of wire chunks split anywhere.

    The first ``.`` of every line is removed; lines end with CRLF (bare CRs stay text) and the
    message starts at a line start. ``bytes.replace`` does the work; only a CRLF or a CRLF-dot
    split by a chunk boundary needs the last two wire bytes of the previous chunk.
    """

    def __init__(self) -> None:
        self._last2 = b"\r\n"  # the last two wire bytes seen: the message starts a line

    def feed(self, wire: bytes) -> bytes:
        """Return the unstuffed content of the next wire chunk."""
        if not wire:
            return b""
        last2 = self._last2
        self._last2 = wire[-2:] if len(wire) >= 2 else last2[-1:] + wire
        data = wire
        if last2 == b"\r\n" and data[:1] == b".":
            data = data[1:]  # a line start just before this chunk
        elif last2[-1:] == b"\r" and data[:2] == b"\n.":
            data = b"\n" + data[2:]  # a CRLF split by the chunk boundary
        return data.replace(b"\r\n.", b"\r\n")


def unstuff(wire: bytes) -> bytes:
    """The content of a whole dot-stuffed message (see `Unstuffer` for a stream)."""
    return Unstuffer().feed(wire)


def last_chunk(content: list[bytes]) -> bytes:
    """``BDAT <n> LAST`` and the whole unstuffed content (given in parts), as one write. Content
    that does not end with CRLF gets one, as the DATA path adds it before the final dot."""
    size = sum(map(len, content))
    if size and _last_two(content) != b"\r\n":
        content = [*content, b"\r\n"]
        size += 2
    return b"".join([b"BDAT %d LAST\r\n" % size, *content])


def _last_two(parts: list[bytes]) -> bytes:
    """The last two bytes of the concatenation of ``parts`` (some may be empty)."""
    out = b""
    for part in reversed(parts):
        out = part[-2:] + out
        if len(out) >= 2:
            return out[-2:]
    return out


def send_last_chunk(up: UpstreamSmtpSession, content: list[bytes]) -> Coroutine[Any, Any, SmtpReply]:
    """Send the whole message (unstuffed, in parts) as one ``BDAT LAST`` chunk; await the reply.
    Written at once; the coroutine is `read_reply`'s own unless the write must drain first."""
    if up.write(last_chunk(content)):
        return _drain_then_reply(up)
    return up.read_reply("end of BDAT", up.data_timeout_s)


async def _drain_then_reply(up: UpstreamSmtpSession) -> SmtpReply:
    await up.drain("BDAT", up.data_timeout_s)
    return await up.read_reply("end of BDAT", up.data_timeout_s)

"""Message content as BDAT chunks (RFC 3030 CHUNKING): one upstream write for a small message.

The client sends DATA to the relay (dot-stuffed wire bytes, framed by `relay.smtp.dataframe`); the
upstream gets ``BDAT <n>`` chunks of the *unstuffed* content and a final ``BDAT <n> LAST``, so
there is no DATA/354 round trip. `Unstuffer` (pure) removes the stuffing dots across arbitrary
chunk splits; `BdatTransfer` coalesces content into chunks of about `CHUNK_BYTES` and keeps the
replies to non-LAST chunks pipelined: read when they have already arrived, and all of them before
LAST goes, so LAST is never sent after a refused chunk.
"""

from __future__ import annotations

from relay.smtp.reply import SmtpReply
from relay.smtp.upstream import UpstreamSmtpSession

CHUNK_BYTES = 256 * 1024
"""Content buffered per session before a non-LAST chunk goes (bounds memory; small messages go
whole with LAST)."""


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


class BdatTransfer:
    """One message's content to the upstream as BDAT chunks, after its MAIL and RCPTs.

    ``add`` buffers unstuffed content and says when a chunk is due, ``send_chunk`` sends it
    (non-LAST) and ``finish`` the rest with LAST. Any non-250 reply to a chunk fails the message:
    it is returned and LAST is never sent; the caller then closes the connection (the upstream
    discards an unfinished BDAT transaction).
    """

    def __init__(self, up: UpstreamSmtpSession, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.up = up
        self.chunk_bytes = chunk_bytes
        self._unstuffer = Unstuffer()
        self._parts: list[bytes] = []
        self._buffered = 0
        self._outstanding = 0  # non-LAST chunks whose reply has not been read yet
        self._total = 0  # content bytes so far
        self._last2 = b""  # the last two content bytes

    def add(self, wire: bytes) -> bool:
        """Buffer the unstuffed content of dot-stuffed ``wire``; True when a chunk is due."""
        data = self._unstuffer.feed(wire)
        if data:
            self._parts.append(data)
            self._buffered += len(data)
            self._total += len(data)
            self._last2 = data[-2:] if len(data) >= 2 else self._last2[-1:] + data
        return self._buffered >= self.chunk_bytes

    async def send_chunk(self) -> SmtpReply | None:
        """Send the buffered content as a non-LAST chunk, unless an earlier chunk's reply that has
        already arrived is a refusal: then return that refusal (and send nothing)."""
        refusal = await self._collect(wait=False)
        if refusal is None:
            await self._send(last=False)
        return refusal

    async def finish(self, wire_tail: bytes = b"") -> tuple[SmtpReply, bool]:
        """Add ``wire_tail``, read every outstanding chunk reply, then send the rest with LAST.

        Returns the upstream's reply to LAST and True; or a chunk's refusal and False (LAST not
        sent). Content not ending with CRLF gets one, as the DATA path adds it before the dot.
        """
        self.add(wire_tail)
        refusal = await self._collect(wait=True)
        if refusal is not None:
            return refusal, False
        if self._total and self._last2 != b"\r\n":
            self._parts.append(b"\r\n")
            self._buffered += 2
        await self._send(last=True)
        return await self.up.read_reply("end of BDAT", self.up.data_timeout_s), True

    async def _send(self, *, last: bool) -> None:
        header = b"BDAT %d LAST\r\n" % self._buffered if last else b"BDAT %d\r\n" % self._buffered
        payload = b"".join([header, *self._parts])  # one write: command and chunk together
        self._parts.clear()
        self._buffered = 0
        await self.up.send_bytes(payload, "BDAT")
        if not last:
            self._outstanding += 1

    async def _collect(self, *, wait: bool) -> SmtpReply | None:
        """Read chunk replies (all outstanding when ``wait``, else those already arrived); return
        the first that is not 250."""
        while self._outstanding and (wait or self.up.reply_waiting):
            reply = await self.up.read_reply("BDAT", self.up.data_timeout_s)
            self._outstanding -= 1
            if reply.code != 250:
                return reply
        return None

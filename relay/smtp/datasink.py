"""One message's content to the upstream, by DATA or as one BDAT chunk, and how it ended.

`RelaySMTP.smtp_DATA` frames the client's DATA and streams the dot-stuffed content into a sink:
`UpstreamDataSink` forwards it with the upstream's DATA (unchanged: the upstream unstuffs what the
client stuffed), `UpstreamBdatSink` as one ``BDAT LAST`` chunk (`relay.smtp.bdat`) when the upstream
offers CHUNKING and the message fits `CHUNK_BYTES`; a larger message switches to DATA before any of
it went upstream. A sink only moves bytes: `finish` returns a `ContentResult` and the transaction
core (`relay.smtp.transaction`) decides what happens to the session. A message we refuse (size,
line length, bare CR/LF) or whose transfer fails is abandoned by closing the upstream connection
before its end (final dot / LAST), so it is never delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from relay.errors import RelayError
from relay.smtp import replies
from relay.smtp.bdat import CHUNK_BYTES, Unstuffer, send_last_chunk
from relay.smtp.dataframe import DataFramer, DataProblem
from relay.smtp.reply import SmtpReply
from relay.smtp.transaction import ContentResult
from relay.smtp.upstream import UpstreamSmtpSession

Busy = Callable[[], AbstractContextManager[None]]

_PROBLEM_REPLY = {DataProblem.TOO_BIG: replies.TOO_BIG, DataProblem.LINE_TOO_LONG: replies.LINE_TOO_LONG,
                  DataProblem.BARE_LINE_END: replies.BARE_LINE_END}


class UpstreamDataSink:
    """Content through the upstream's DATA (already sent), dot-stuffed as received.

    The upstream's reply to DATA is read before the first content goes (our 354 went to the
    client at once); a refusal of DATA is the final reply and the content is read and dropped.
    """

    def __init__(self, up: UpstreamSmtpSession, max_bytes: int, busy: Busy) -> None:
        self.up = up
        self.max_bytes = max_bytes
        self.busy = busy
        self.error: BaseException | None = None
        self.abandoned = False
        self.refusal: SmtpReply | None = None  # the upstream refused DATA: the final reply
        self._go_ahead_read = False

    @property
    def stopped(self) -> bool:
        """True once nothing more may be forwarded (failure, refusal, abandoned)."""
        return self.error is not None or self.abandoned or self.refusal is not None

    def abandon(self) -> None:
        """Close the upstream before the end of the content: the message is never delivered."""
        if not self.abandoned:
            self.abandoned = True
            self.up.abort()

    async def _upstream_ready(self) -> bool:
        """Read the upstream's reply to DATA once; True when it was 354 (content may go)."""
        if not self._go_ahead_read:
            self._go_ahead_read = True
            try:
                with self.busy():
                    reply = await self.up.data_reply()
            except (RelayError, OSError) as exc:
                self.error = exc
                self.abandon()
                return False
            if reply.code != 354:
                self.refusal = reply  # its transaction stays open upstream: RSET before reuse
        return not self.stopped

    async def write(self, wire_bytes: bytes) -> None:
        """Forward content; after a failure keep reading the client but drop the bytes.

        Until the upstream's 354 has been read this waits for it (and so stops reading the
        client: what the client sent meanwhile stays in the socket buffers, bounded by TCP)."""
        if self.stopped:
            return
        if not self._go_ahead_read and not await self._upstream_ready():
            return
        try:
            with self.busy():
                await self.up.data_write(wire_bytes)
        except (RelayError, OSError) as exc:
            self.error = exc
            self.abandon()

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> ContentResult:
        """Send ``tail`` with the final dot; the upstream's reply, our refusal or the failure."""
        if framer.problem is not None:
            self.abandon()
            return ContentResult(refused=_PROBLEM_REPLY[framer.problem])
        if not self.stopped:
            await self._upstream_ready()  # an empty message: no write() read it yet
        if self.refusal is not None:
            return ContentResult(reply=self.refusal, open_after=True)
        if self.error is None:
            try:  # the caller waits inside its busy(): no client idle timeout meanwhile
                return ContentResult(reply=await self.up.data_finish(tail))
            except (RelayError, OSError) as exc:
                self.error = exc
        self.abandon()
        return ContentResult(error=self.error)


class UpstreamBdatSink:
    """Content as one ``BDAT LAST`` chunk; past `CHUNK_BYTES` it goes by DATA instead."""

    def __init__(self, up: UpstreamSmtpSession, max_bytes: int, busy: Busy) -> None:
        self.up = up
        self.max_bytes = max_bytes
        self.busy = busy
        self.abandoned = False
        self._wire: list[bytes] = []  # kept until the end, or until the message outgrows a chunk
        self._content: list[bytes] = []  # the same, unstuffed as it arrives
        self._unstuffer = Unstuffer()
        self._buffered = 0
        self._data: UpstreamDataSink | None = None  # the DATA sink once the message went that way

    async def write(self, wire_bytes: bytes) -> None:
        """Buffer content; switch to DATA when it outgrows one chunk."""
        if self._data is not None:
            await self._data.write(wire_bytes)
            return
        if self.abandoned:
            return
        self._wire.append(wire_bytes)
        self._content.append(self._unstuffer.feed(wire_bytes))
        self._buffered += len(wire_bytes)
        if self._buffered > CHUNK_BYTES:
            await self._switch_to_data()

    async def _switch_to_data(self) -> None:
        """Send DATA and the wire bytes kept so far; the rest of the message follows them."""
        wire, self._wire, self._content = b"".join(self._wire), [], []
        self._data = UpstreamDataSink(self.up, self.max_bytes, self.busy)
        try:
            self.up.data_send()
        except (RelayError, OSError) as exc:
            self._data.error = exc
            self._data.abandon()
            return
        await self._data.write(wire)

    def abandon(self) -> None:
        """Close the upstream before the end of the content (whichever way it was going)."""
        if self._data is not None:
            self._data.abandon()
        if not self.abandoned:
            self.abandoned = True
            self.up.abort()

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> ContentResult:
        """Send the whole message with LAST (or finish the DATA); the upstream's reply, our
        refusal or the failure. A refused LAST leaves the transaction open (RFC 3030: RSET)."""
        if self._data is not None:
            return await self._data.finish(framer, tail)
        if framer.problem is not None:
            self.abandon()
            return ContentResult(refused=_PROBLEM_REPLY[framer.problem])
        self._content.append(self._unstuffer.feed(tail))
        content, self._content, self._wire = self._content, [], []
        try:  # the caller waits inside its busy(): no client idle timeout meanwhile
            reply = await send_last_chunk(self.up, content)
        except (RelayError, OSError) as exc:
            self.abandon()
            return ContentResult(error=exc)
        return ContentResult(reply=reply, open_after=not reply.is_positive)

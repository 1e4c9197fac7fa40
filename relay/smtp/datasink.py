"""Where one message's content goes upstream, and the client's reply to its final dot.

`RelaySMTP.smtp_DATA` frames the client's DATA and streams the dot-stuffed content into a sink:
`UpstreamDataSink` forwards it with the upstream's DATA (unchanged: the upstream unstuffs what the
client stuffed), `UpstreamBdatSink` as BDAT chunks (`relay.smtp.bdat`) when the upstream offers
CHUNKING. Either way the client's final reply is the upstream's reply to the end of the content,
or a 4xx/5xx of ours: a message we refuse (size, line length, bare CR/LF) or whose upstream
transfer fails is abandoned by closing the upstream connection before its end (final dot / LAST),
so it is never delivered.
"""

from __future__ import annotations

import time
from typing import Protocol

from relay.errors import RelayError
from relay.explain import log_explanation
from relay.metrics import RelayObserver
from relay.smtp.bdat import BdatTransfer
from relay.smtp.dataframe import DataFramer, DataProblem
from relay.smtp.failures import client_reply_for_upstream
from relay.smtp.protocol import ConnectionState, RelaySMTP
from relay.smtp.reply import SmtpReply
from relay.smtp.upstream import UpstreamSmtpSession

TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 998 octets + CRLF)"
BARE_LINE_END = ("554 5.6.0 Message refused: bare LF or bare CR in the content (RFC 5321 2.3.8); "
                 "end every line with CRLF")
LARGE_BY_DATA = True
"""A message bigger than one BDAT chunk (`relay.smtp.bdat.CHUNK_BYTES`) goes by DATA after all:
streamed as it arrives, with no unstuffing copy and no per-chunk replies, it is cheaper than BDAT
once the round trip BDAT saves is small next to the transfer (5 MB: relay CPU 22.5 -> ~17 ms)."""
_DATA_PROBLEM_REPLY = {DataProblem.TOO_BIG: TOO_BIG, DataProblem.LINE_TOO_LONG: LINE_TOO_LONG,
                       DataProblem.BARE_LINE_END: BARE_LINE_END}


class SessionKeeper(Protocol):
    """What a sink needs from the handler that owns the connection's upstream session."""

    def drop_upstream(self, state: ConnectionState) -> None:
        """Close the session (never reused)."""
        ...

    def release_upstream(self, state: ConnectionState) -> None:
        """Pooling: give the session back when no transaction is open."""
        ...

    def broken(self, state: ConnectionState, exc: BaseException) -> SmtpReply:
        """Log an upstream failure mid-transaction, drop the session; return the client's 4xx."""
        ...

    @property
    def observer(self) -> RelayObserver:
        """Where message outcomes are reported (relay.metrics)."""
        ...


def note(state: ConnectionState, reply: SmtpReply) -> None:
    """Remember the upstream's last reply (for the session summary log line)."""
    state.last_upstream_reply = reply.one_line()
    if reply.code >= 400 and state.account is not None:  # cause + fix, once per account and cause
        log_explanation(state.account.name, state.account.mailbox, state.last_upstream_reply)


class _Sink:
    """The common part: failures, abandoning, the end of a transaction."""

    def __init__(self, keeper: SessionKeeper, server: RelaySMTP, up: UpstreamSmtpSession,
                 max_bytes: int) -> None:
        self.keeper = keeper
        self.server = server
        self.up = up
        self.max_bytes = max_bytes
        self.error: BaseException | None = None
        self.abandoned = False
        self.refusal: SmtpReply | None = None  # the upstream refused the content: the final reply
        self.started = time.monotonic()

    def _report(self, code: int | None, size: int) -> None:
        account = self.server.state.account
        if account is not None:
            self.keeper.observer.message_finished(account.name, code, size, time.monotonic() - self.started)

    @property
    def stopped(self) -> bool:
        """True once nothing more may be forwarded (failure, refusal, abandoned)."""
        return self.error is not None or self.abandoned or self.refusal is not None

    def abandon(self) -> None:
        """Close the upstream before the end of the content: the message is never delivered."""
        if not self.abandoned:
            self.abandoned = True
            state = self.server.state
            if state.upstream is self.up:
                self.keeper.drop_upstream(state)
            else:
                self.up.abort()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.abandon()

    def _problem_reply(self, framer: DataFramer) -> str | None:
        """Our own refusal of the content (never forwarded to its end), if any."""
        if framer.problem is None:
            return None
        self.abandon()
        return _DATA_PROBLEM_REPLY[framer.problem]

    def _error_reply(self) -> str:
        assert self.error is not None
        self.abandon()
        self._report(None, 0)
        return self.keeper.broken(self.server.state, self.error).render()

    def _refusal_reply(self) -> str:
        assert self.refusal is not None
        note(self.server.state, self.refusal)
        self._report(self.refusal.code, 0)
        return client_reply_for_upstream(self.refusal).render()

    def _final_reply(self, reply: SmtpReply, framer: DataFramer, *, reset_on_failure: bool) -> str:
        """The upstream's reply to the end of the content ends the transaction. With
        ``reset_on_failure`` a refusal leaves its state unknown (RFC 3030: RSET before reuse)."""
        state = self.server.state
        state.in_transaction = reset_on_failure and not reply.is_positive
        note(state, reply)
        self._report(reply.code, framer.received_bytes)
        if reply.is_positive:
            state.messages += 1
            state.bytes += framer.received_bytes
        elif reply.code == 421:
            self.keeper.drop_upstream(state)
        self.keeper.release_upstream(state)  # pooling: the transaction is over (unless RSET is due)
        return client_reply_for_upstream(reply).render()


class UpstreamDataSink(_Sink):
    """Content through the upstream's DATA (already sent by the handler), dot-stuffed as received."""

    def __init__(self, keeper: SessionKeeper, server: RelaySMTP, up: UpstreamSmtpSession,
                 max_bytes: int) -> None:
        super().__init__(keeper, server, up, max_bytes)
        self._go_ahead_read = False

    async def _upstream_ready(self) -> bool:
        """Read the upstream's reply to DATA once; True when it was 354 (content may go)."""
        if not self._go_ahead_read:
            self._go_ahead_read = True
            try:
                with self.server.busy():
                    reply = await self.up.data_reply()
            except (RelayError, OSError) as exc:
                self._fail(exc)
                return False
            note(self.server.state, reply)
            if reply.code != 354:
                # The upstream's transaction stays open for us: RSET before the next MAIL.
                self.refusal = reply
        return not self.stopped

    async def write(self, wire_bytes: bytes) -> None:
        """Forward content; after an upstream failure keep reading the client but drop the bytes.

        Until the upstream's 354 has been read this waits for it (and so stops reading the
        client: what the client sent meanwhile stays in the socket buffers, bounded by TCP)."""
        if self.stopped:
            return
        if not self._go_ahead_read and not await self._upstream_ready():
            return
        try:
            with self.server.busy():
                await self.up.data_write(wire_bytes)
        except (RelayError, OSError) as exc:
            self._fail(exc)

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> str:
        """Send ``tail`` (the content of the chunk that held the end of DATA) with the final dot
        and pass the upstream's reply on, or refuse (size, line, failure, or the upstream's
        refusal of DATA)."""
        if (problem := self._problem_reply(framer)) is not None:
            return problem
        if self.error is None and not self.abandoned:
            await self._upstream_ready()  # an empty message: no write() read it yet
        if self.refusal is not None:
            return client_reply_for_upstream(self.refusal).render()
        if self.error is None:
            try:
                with self.server.busy():
                    reply = await self.up.data_finish(tail)
            except (RelayError, OSError) as exc:
                self.error = exc
        if self.error is not None:
            return self._error_reply()
        return self._final_reply(reply, framer, reset_on_failure=False)


class UpstreamBdatSink(_Sink):
    """Content as BDAT chunks: unstuffed, coalesced, the last one with LAST (see relay.smtp.bdat).

    A refused chunk fails the message: the client's final reply is that refusal, LAST is never
    sent and the connection is closed (RFC 3030 leaves the transaction state unknown). With
    `LARGE_BY_DATA`, a message that outgrows the first chunk before its end is sent with DATA
    instead (nothing of it went upstream yet), through an `UpstreamDataSink`."""

    def __init__(self, keeper: SessionKeeper, server: RelaySMTP, up: UpstreamSmtpSession,
                 max_bytes: int) -> None:
        super().__init__(keeper, server, up, max_bytes)
        self.transfer = BdatTransfer(up)
        self._wire: list[bytes] | None = [] if LARGE_BY_DATA else None  # kept until a chunk is due
        self._data: UpstreamDataSink | None = None  # the DATA sink once the message went that way

    async def write(self, wire_bytes: bytes) -> None:
        """Buffer content; send a chunk when enough is buffered (or switch to DATA, see above)."""
        if self._data is not None:
            await self._data.write(wire_bytes)
            return
        if self._wire is not None:
            self._wire.append(wire_bytes)
        if self.stopped or not self.transfer.add(wire_bytes):
            return
        if self._wire is not None:
            await self._switch_to_data()
            return
        try:
            with self.server.busy():
                refusal = await self.transfer.send_chunk()
        except (RelayError, OSError) as exc:
            self._fail(exc)
            return
        if refusal is not None:
            self.refusal = refusal
            self.abandon()

    async def _switch_to_data(self) -> None:
        """Send DATA and the wire bytes kept so far; the rest of the message follows them."""
        wire, self._wire = b"".join(self._wire or ()), None
        self.transfer = BdatTransfer(self.up)  # drop the unstuffed copy
        try:
            self.up.data_send()
        except (RelayError, OSError) as exc:
            self._fail(exc)
            return
        self._data = UpstreamDataSink(self.keeper, self.server, self.up, self.max_bytes)
        await self._data.write(wire)

    def abandon(self) -> None:
        """Close the upstream before the end of the content (whichever way it was going)."""
        if self._data is not None:
            self._data.abandon()
        super().abandon()

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> str:
        """Send the rest with LAST and pass the upstream's reply on, or refuse (size, line,
        failure, or the upstream's refusal of a chunk)."""
        if self._data is not None:
            return await self._data.finish(framer, tail)
        if (problem := self._problem_reply(framer)) is not None:
            return problem
        if self.error is None and self.refusal is None:  # abandoned: finish() fails on the closed session
            try:
                with self.server.busy():
                    reply, delivered = await self.transfer.finish(tail)
            except (RelayError, OSError) as exc:
                self.error = exc
            else:
                if not delivered:
                    self.refusal = reply
                    self.abandon()
        if self.refusal is not None:
            return self._refusal_reply()
        if self.error is not None:
            return self._error_reply()
        return self._final_reply(reply, framer, reset_on_failure=True)

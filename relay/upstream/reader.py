"""`LeanStreamReader`: asyncio's `StreamReader` with fewer Python steps per read and per arrival.

A mail relay waits for data after nearly every command (the client waits for each reply, the
upstream for each command), so each read usually suspends once and each arrival wakes it.
asyncio's reader spends five Python calls per arrival (``data_received`` -> the weak-reference
property ``_stream_reader`` -> ``feed_data`` -> ``_wakeup_waiter`` -> ``_maybe_resume_transport``)
and a second coroutine (``_wait_for_data``) per wait: a measurable share of the relay's
per-message CPU (bench/README.md, "Against emailproxy"). This subclass keeps every semantic
(limits, ``LimitOverrunError``, ``IncompleteReadError``, EOF, exceptions, pause/resume of the
transport) by handing every case but the plain one to `StreamReader`'s own code:

* ``feed_data`` appends and wakes the waiter inline;
* ``readuntil`` / ``read`` return at once when the buffer holds what they need, and otherwise
  wait on the future themselves (no ``_wait_for_data`` coroutine) before trying again;
* `wait_lines` waits until the buffer holds a number of lines (or EOF, or an error) with one
  wake-up: an SMTP client that pipelined MAIL and RCPT reads both replies after one resume;
* `LeanStreamProtocol` feeds it without the weak-reference lookup.

tests/unit/test_lean_reader.py runs the same reads against both readers and compares them.
"""

from __future__ import annotations

import asyncio


class LeanStreamReader(asyncio.StreamReader):
    """`asyncio.StreamReader` with a lean plain path (see the module docstring)."""

    # StreamReader's private state, stable since Python 3.4 (typeshed does not declare it)
    _buffer: bytearray
    _waiter: asyncio.Future[None] | None
    _transport: asyncio.Transport | None
    _paused: bool
    _eof: bool
    _limit: int
    _exception: BaseException | None
    _loop: asyncio.AbstractEventLoop
    _want_lines = 0  # wait_lines: wake the reader only once this many more line ends arrived

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        """Append ``data``; wake a waiting read (unless `wait_lines` needs more lines)."""
        if not data:
            return
        buffer = self._buffer
        buffer += data
        waiter = self._waiter
        if waiter is not None and self._want_lines:
            self._want_lines -= data.count(b"\n")  # the new bytes only: no rescans
            if self._want_lines > 0 and len(buffer) <= self._limit:
                waiter = None  # not yet
        if waiter is not None:
            self._want_lines = 0
            self._waiter = None
            if not waiter.cancelled():
                waiter.set_result(None)
        if len(buffer) > 2 * self._limit:
            self._pause_if_full()

    def _pause_if_full(self) -> None:
        """StreamReader.feed_data's pause of a transport whose reader holds too much."""
        transport = self._transport
        if transport is not None and not self._paused:
            try:
                transport.pause_reading()
            except NotImplementedError:
                self._transport = None
            else:
                self._paused = True

    def _plain(self) -> bool:
        """True when a wait needs none of StreamReader's special cases."""
        return (self._exception is None and not self._eof
                and not self._paused and self._waiter is None)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        """`StreamReader.readuntil`, returning at once when the buffer holds a short enough line."""
        buffer = self._buffer
        offset = 0  # no separator starts before it (a line arriving in pieces is scanned once)
        while True:
            end = buffer.find(separator, offset)
            if end >= 0 and self._exception is None:
                if end > self._limit:
                    break  # StreamReader raises LimitOverrunError
                end += len(separator)
                line = bytes(buffer[:end])
                del buffer[:end]
                if self._paused:
                    self._maybe_resume_transport()  # type: ignore[attr-defined]
                return line
            if (end >= 0 or len(buffer) > self._limit or self._exception is not None
                    or self._eof or self._paused or self._waiter is not None):
                break  # StreamReader's own code for every special case
            offset = max(0, len(buffer) + 1 - len(separator))
            # StreamReader._wait_for_data without its coroutine
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return await super().readuntil(separator)

    async def read(self, n: int = -1) -> bytes:
        """`StreamReader.read`, returning at once when the buffer holds data."""
        buffer = self._buffer
        if n > 0 and self._exception is None:
            if not buffer and self._plain():
                waiter = self._waiter = self._loop.create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
            if buffer and self._exception is None and not self._paused:
                data = bytes(buffer[:n])
                del buffer[:n]
                return data
        return await super().read(n)

    async def wait_lines(self, count: int) -> None:
        """Return once the buffer holds ``count`` line ends, or at EOF or an error (the reads
        that follow then see it); a caller expecting several one-line replies resumes once."""
        missing = count - self._buffer.count(b"\n")
        if missing <= 0 or not self._plain():
            return
        self._want_lines = missing
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
            self._want_lines = 0


class LeanStreamProtocol(asyncio.StreamReaderProtocol):
    """`asyncio.StreamReaderProtocol` that feeds its `LeanStreamReader` directly."""

    def __init__(self, reader: LeanStreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self._lean_reader: LeanStreamReader | None = reader

    def data_received(self, data: bytes) -> None:
        reader = self._lean_reader
        if reader is not None:
            reader.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lean_reader = None


async def open_lean_connection(host: str, port: int, *, limit: int, **kwargs: object,
                               ) -> tuple[LeanStreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection` with a `LeanStreamReader`."""
    loop = asyncio.get_running_loop()
    reader = LeanStreamReader(limit=limit, loop=loop)
    transport, _ = await loop.create_connection(  # type: ignore[call-overload]
        lambda: LeanStreamProtocol(reader, loop), host, port, **kwargs)
    protocol = transport.get_protocol()
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

"""Splice two connected transports: every byte received on one is written to the other.

After an IMAP login the relay has nothing left to parse, so instead of a read/write coroutine
per direction it hands both transports to a pair of `asyncio.Protocol` objects (as the bench's
do-nothing forwarder does): ``data_received`` writes straight into the peer's transport, with no
stream buffer and no task switch per chunk. Flow control is the transports' own: when one side's
write buffer passes its high-water mark (``pause_writing``) the other side stops reading until it
drains (``resume_writing``), so a slow reader slows the sender down instead of filling memory.

`Splice.run` returns how the session ended: one side closed (its EOF is passed on as a
half-close where the transport allows it, and the other side still gets ``grace_s`` to finish its
last replies), or nothing moved in either direction for ``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpliceStats:
    """Bytes moved in each direction."""

    to_upstream: int = 0
    to_client: int = 0
    ended_by: str = ""
    errors: list[str] = field(default_factory=list)


class _Half(asyncio.Protocol):
    """The protocol of one transport: what it receives goes to the peer's transport."""

    def __init__(self, splice: Splice, name: str) -> None:
        self.splice = splice
        self.name = name
        self.transport: Any = None  # asyncio's or uvloop's (SSL) transport
        self.replaced: asyncio.BaseProtocol | None = None  # the stream protocol we took over from
        self.peer: _Half | None = None
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.splice.moved(self.name, len(data))
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.splice.ended(self.name, "eof")
        peer = self.peer
        if peer is not None and not peer.lost and peer.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
        # Keep our sending side open (the peer may still answer). A TLS transport cannot stay half
        # open: asyncio closes it anyway and warns when asked to, so ask only for plain TCP.
        return self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            self.splice.stats.errors.append(f"{self.name}: {exc}")
        self.splice.ended(self.name, "closed" if exc is None else "error")
        # Nothing calls this half again: drop what points back (the splice, the peer), so the
        # ended splice and the connections' buffers are freed by reference counting, not left
        # in cycles for the cycle collector (the peer may still write to our closed transport,
        # so that stays). The stream protocol the splice replaced hears of the end too, as it
        # would have without the splice: it drops its own cycle (its StreamWriter and task).
        replaced, self.replaced = self.replaced, None
        self.peer = None
        del self.splice
        if replaced is not None:
            replaced.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.peer is not None and not self.peer.lost:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.lost:
            self.peer.transport.resume_reading()


class Splice:
    """Relays bytes between a client and an upstream transport until one side ends."""

    def __init__(self, client: Any, upstream: Any, *, idle_timeout_s: float, grace_s: float,
                 idle_goodbye: bytes = b"") -> None:
        self._loop = asyncio.get_running_loop()
        self.stats = SpliceStats()
        self._idle_timeout_s = idle_timeout_s
        self._grace_s = grace_s
        self._idle_goodbye = idle_goodbye
        self._last_activity = self._loop.time()
        self._first_end: asyncio.Future[str] = self._loop.create_future()
        self._upstream_done: asyncio.Future[None] = self._loop.create_future()
        self._all_lost = asyncio.Event()
        self.client = _Half(self, "client")
        self.upstream = _Half(self, "upstream")
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.client.transport, self.upstream.transport = client, upstream

    def moved(self, source: str, count: int) -> None:
        """Count bytes received from ``source`` and note the activity."""
        self._last_activity = self._loop.time()
        if source == "client":
            self.stats.to_upstream += count
        else:
            self.stats.to_client += count

    def ended(self, side: str, how: str) -> None:
        """One side reached EOF or closed."""
        if self.client.lost and self.upstream.lost:
            self._all_lost.set()
        if not self._first_end.done():
            self._first_end.set_result(f"{side} {how}")
        if side == "upstream" and not self._upstream_done.done():
            self._upstream_done.set_result(None)

    async def run(self, to_upstream: bytes, to_client: bytes) -> str:
        """Send the bytes already read on each side, splice, and return how the session ended.

        The transports must not be read by anyone else; both are closed (after flushing) on return.
        """
        client, upstream = self.client.transport, self.upstream.transport
        self.client.replaced, self.upstream.replaced = client.get_protocol(), upstream.get_protocol()
        client.set_protocol(self.client)
        upstream.set_protocol(self.upstream)
        if to_upstream:
            self.moved("client", len(to_upstream))
            upstream.write(to_upstream)
        if to_client:
            self.moved("upstream", len(to_client))
            client.write(to_client)
        client.resume_reading()
        upstream.resume_reading()
        try:
            how = await self._until_end()
            if how == "idle timeout" and self._idle_goodbye and not self.client.lost:
                client.write(self._idle_goodbye)
            if how.startswith("client eof"):
                # The client only closed its sending side (after LOGOUT, say): its last replies
                # still come back from the upstream within the grace period.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._upstream_done), self._grace_s)
            self.stats.ended_by = how
            return how
        finally:
            await self._close()

    async def _close(self) -> None:
        """Close both transports (flushing what is buffered); abort what does not go in time."""
        for half in (self.upstream, self.client):
            if not half.lost:
                half.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_lost.wait(), self._grace_s)
        for half in (self.upstream, self.client):
            if not half.lost:
                half.transport.abort()

    async def _until_end(self) -> str:
        while True:
            remaining = self._last_activity + self._idle_timeout_s - self._loop.time()
            if remaining <= 0:
                return "idle timeout"
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(self._first_end), remaining)

"""Write-side flow control without a coroutine and a timer per small write.

``await writer.drain()`` only waits while the transport's buffer is above its high-water mark
(the protocol is paused) or the connection is closing; for the usual short reply or command line
it returns at once. Wrapping it in ``asyncio.timeout`` still schedules and cancels a timer handle
each time (~3 us, several times per message). `needs_drain` is the cheap check that lets callers
skip the drain, and its timeout, in that common case; the buffer stays bounded by the high-water
mark plus one write, and a closing connection still goes through ``drain()`` so its error surfaces.
"""

from __future__ import annotations

import asyncio


def write_now(transport: asyncio.WriteTransport, data: bytes) -> bool:
    """``transport.write(data)`` (what ``StreamWriter.write`` does, one Python call less); True when
    ``await writer.drain()`` might then wait or raise (as `needs_drain`)."""
    transport.write(data)
    if transport.is_closing():
        return True
    return bool(transport.get_write_buffer_size() >= transport.get_write_buffer_limits()[1])


def needs_drain(writer: asyncio.StreamWriter) -> bool:
    """True when ``await writer.drain()`` might wait or raise (buffer at/above high water, closing)."""
    transport = writer.transport
    if transport.is_closing():
        return True
    return bool(transport.get_write_buffer_size() >= transport.get_write_buffer_limits()[1])

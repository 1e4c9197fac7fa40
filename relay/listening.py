"""Socket settings shared by the local listeners."""

from __future__ import annotations

import socket

MIN_BACKLOG = 1024


def listen_backlog(max_connections: int) -> int:
    """The listen() backlog for a listener that accepts up to ``max_connections`` at once.

    asyncio's default of 100 lets the kernel drop the final ACK of a burst of connects: the client
    believes it is connected and waits for a greeting the relay never sees. The kernel caps the
    value at net.core.somaxconn.
    """
    return max(max_connections, MIN_BACKLOG, getattr(socket, "SOMAXCONN", 128))

"""The floor for any relay written in Python: a byte forwarder with no work of its own.

``python -m bench.forwarder SMTP_PORT POP3_PORT IMAP_PORT`` listens on one free loopback port per
target and pipes every connection, byte for byte, to the bench upstream's SMTP, POP3 and IMAP
ports: no TLS termination (the client's TLS goes through it end to end), no parsing, no logins,
asyncio protocol callbacks on uvloop when installed. The bench runs the ``direct`` client through
it as the target ``floor``: its ratio to direct is what one extra process hop alone costs on this
machine, a ceiling for the relay, which must also terminate TLS twice and speak the protocols.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from relay import eventloop

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOOR = "floor"
"""The bench target name of the direct client going through the forwarder."""


class _Pipe(asyncio.Protocol):
    """One direction's transport; what it receives goes to its peer (buffered until connected)."""

    def __init__(self) -> None:
        self.peer: _Pipe | None = None
        self.transport: Any = None  # asyncio's or uvloop's transport (not an asyncio.Transport subclass)
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in self._early:
            transport.write(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if self.peer.transport is None:
            self.peer._early.append(data)
        else:
            self.peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve(targets: list[int]) -> None:
    """Listen once per target port; print the listening ports as JSON; run until stdin closes."""
    loop = asyncio.get_running_loop()
    ports = []
    for target in targets:
        def accept(target: int = target) -> _Pipe:
            client, upstream = _Pipe(), _Pipe()
            client.peer, upstream.peer = upstream, client
            connecting = loop.create_connection(lambda: upstream, "127.0.0.1", target)
            task = loop.create_task(connecting)
            task.add_done_callback(lambda t: t.exception() and client.transport and client.transport.close())
            return client

        server = await loop.create_server(accept, "127.0.0.1", 0, backlog=4096)
        ports.append(server.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes our stdin to stop us


class ForwarderProcess:
    """A running ``python -m bench.forwarder``: its ``smtp_port``, ``pop3_port`` and ``imap_port``."""

    def __init__(self, smtp_target: int, pop3_target: int, imap_target: int) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "bench.forwarder", str(smtp_target),
                                       str(pop3_target), str(imap_target)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, cwd=REPO_ROOT)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the bench forwarder exited before printing its ports")
        self.smtp_port, self.pop3_port, self.imap_port = json.loads(line)

    def stop(self) -> None:
        """Close its stdin (it exits); kill it if it does not."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


if __name__ == "__main__":
    eventloop.run(serve([int(port) for port in sys.argv[1:]]), eventloop.resolve(None))

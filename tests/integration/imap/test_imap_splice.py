"""The post-login splice over real sockets: back-pressure, byte-exact transfer, half-close, idle end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

from relay.eventloop import loop_factory, resolve
from relay.imap.splice import Splice

HIGH_WATER = 256 * 1024


def run(coro) -> object:
    """Run ``coro`` on the loop kind `relay serve` uses (uvloop when installed)."""
    factory = loop_factory(resolve(None)) or asyncio.new_event_loop
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    """A transport for the relay's end of a TCP connection and the plain socket of the other end."""
    listener = socket.create_server(("127.0.0.1", 0))
    other = socket.create_connection(listener.getsockname())
    mine, _ = listener.accept()
    listener.close()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, mine)
    transport.set_write_buffer_limits(high=HIGH_WATER)
    transport.pause_reading()  # as after the login: nobody reads until the splice starts
    other.setblocking(False)
    return transport, other


def test_slow_client_pauses_the_upstream_and_gets_every_byte() -> None:
    """A client that does not read makes the relay stop reading the upstream (bounded buffer);
    once it reads, it gets exactly the bytes the upstream sent, then both sides close."""
    async def scenario() -> None:
        client_t, client = await _pair()
        upstream_t, upstream = await _pair()
        splice = Splice(client_t, upstream_t, idle_timeout_s=30, grace_s=2)
        task = asyncio.ensure_future(splice.run(b"", b"hello "))
        payload = os.urandom(1024 * 1024) * 40  # 40 MiB
        sent = 0
        deadline = time.monotonic() + 20
        while upstream_t.is_reading():  # wait for back-pressure while the upstream keeps sending
            assert time.monotonic() < deadline, "the relay never paused reading the upstream"
            try:
                sent += upstream.send(payload[sent:sent + 65536])
            except BlockingIOError:
                await asyncio.sleep(0.01)
        assert client_t.get_write_buffer_size() <= HIGH_WATER + 4 * 65536
        assert sent < len(payload)  # it did not swallow the whole message
        received = bytearray()
        loop = asyncio.get_running_loop()
        while sent < len(payload) or len(received) < 6 + len(payload):
            if sent < len(payload):
                with contextlib.suppress(BlockingIOError):
                    sent += upstream.send(payload[sent:sent + 65536])
            try:
                chunk = client.recv(1024 * 1024)
                received += chunk
            except BlockingIOError:
                await asyncio.sleep(0.001)
            assert time.monotonic() < deadline + 40
        assert bytes(received) == b"hello " + payload
        upstream.close()  # the upstream ends the session
        assert await asyncio.wait_for(task, 10) == "upstream eof"
        assert await loop.sock_recv(client, 1) == b""
        client.close()
        assert splice.stats.to_client == 6 + len(payload)

    run(scenario())


def test_client_half_close_still_gets_the_upstream_reply() -> None:
    """After the client's EOF the upstream's last reply still reaches it before the close."""
    async def scenario() -> None:
        client_t, client = await _pair()
        upstream_t, upstream = await _pair()
        splice = Splice(client_t, upstream_t, idle_timeout_s=30, grace_s=5)
        task = asyncio.ensure_future(splice.run(b"z LOGOUT\r\n", b""))
        loop = asyncio.get_running_loop()
        client.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(upstream, 100) == b"z LOGOUT\r\n"
        assert await loop.sock_recv(upstream, 100) == b""  # the half-close was passed on
        await loop.sock_sendall(upstream, b"* BYE\r\nz OK LOGOUT completed\r\n")
        upstream.close()
        data = b""
        while chunk := await loop.sock_recv(client, 100):
            data += chunk
        assert data == b"* BYE\r\nz OK LOGOUT completed\r\n"
        assert (await asyncio.wait_for(task, 10)).startswith("client eof")
        client.close()

    run(scenario())


def test_idle_session_gets_bye_and_is_closed() -> None:
    """Nothing in either direction for the idle timeout: the client gets the goodbye, both close."""
    async def scenario() -> None:
        client_t, client = await _pair()
        upstream_t, upstream = await _pair()
        splice = Splice(client_t, upstream_t, idle_timeout_s=0.5, grace_s=2, idle_goodbye=b"* BYE idle\r\n")
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(splice.run(b"", b""), 10) == "idle timeout"
        assert await loop.sock_recv(client, 100) == b"* BYE idle\r\n"
        assert await loop.sock_recv(client, 100) == b""
        assert await loop.sock_recv(upstream, 100) == b""
        client.close()
        upstream.close()

    run(scenario())

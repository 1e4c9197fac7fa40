"""A background event loop thread and a base class for loopback servers running on it.

Every sandbox server runs on an asyncio loop in one daemon thread, so the same server serves sync
tests, async tests (each with its own loop), `relay demo` and a subprocess. `SandboxWorld` owns one
`LoopThread` for all its servers; a server started alone owns its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections import Counter
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from relay import eventloop

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0


class LoopThread:
    """An asyncio event loop running forever in one daemon thread.

    The loop is the kind `relay serve` runs on (uvloop when installed, see relay.eventloop), so
    servers started here in tests and in `relay demo` run as they do in production."""

    def __init__(self, name: str = "sandbox-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (raises if not started)."""
        if self._loop is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._loop

    def start(self) -> Self:
        """Start the thread and return once its loop runs."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        loop = (eventloop.loop_factory(eventloop.resolve(None)) or asyncio.new_event_loop)()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"{self.name} did not start")
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = START_TIMEOUT_S) -> T:
        """Run ``coro`` on the loop from another thread and return its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run() called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call_soon(self, callback: Any, *args: Any) -> None:
        """Schedule a plain callback on the loop, thread-safely."""
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self) -> None:
        """Cancel what is left, stop the loop, join the thread and close the loop. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if thread.is_alive():
            with contextlib.suppress(TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(START_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(START_TIMEOUT_S)
        if not loop.is_running():
            loop.close()


class LoopbackServer:
    """Base of the sandbox servers: a TCP listener on 127.0.0.1 with connection tracking.

    Subclasses implement :meth:`handle`. State shared with test threads is guarded by ``lock``.
    """

    name = "server"

    def __init__(self, *, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = LOOPBACK
        self._requested_port = port
        self._listen_ssl = ssl_context
        self.port = 0
        self.lock = threading.RLock()
        self._counters: Counter[str] = Counter()
        self._loop_thread: LoopThread | None = None
        self._owns_loop = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, loop_thread: LoopThread | None = None) -> Self:
        """Bind and listen, on ``loop_thread`` or on a new loop thread this server owns."""
        if self._server is not None:
            return self
        if loop_thread is None:
            loop_thread = LoopThread(f"sandbox-{self.name}").start()
            self._owns_loop = True
        self._loop_thread = loop_thread
        try:
            loop_thread.run(self._start_async())
        except BaseException:
            self.stop()
            raise
        return self

    async def _start_async(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self._requested_port, ssl=self._listen_ssl,
            backlog=2048, limit=1 << 16,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listener and every connection; stop the owned loop. Idempotent."""
        loop_thread = self._loop_thread
        if loop_thread is None:
            return
        self._loop_thread = None
        with contextlib.suppress(RuntimeError, TimeoutError):
            loop_thread.run(self._stop_async())
        if self._owns_loop:
            loop_thread.stop()
            self._owns_loop = False

    async def _stop_async(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def loop_thread(self) -> LoopThread | None:
        """The loop thread this server runs on (None when stopped)."""
        return self._loop_thread

    # --- counters -------------------------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of this server's counters."""
        with self.lock:
            return dict(self._counters)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key``."""
        with self.lock:
            self._counters[key] += n

    # --- connections ----------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        with self.lock:  # "open_connections" is a gauge; "peak_open_connections" its maximum
            self._counters["connections"] += 1
            self._counters["open_connections"] += 1
            self._counters["peak_open_connections"] = max(self._counters["peak_open_connections"],
                                                          self._counters["open_connections"])
        try:
            await self.handle(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels connection tasks. Ending normally keeps asyncio's stream callback
            # (which calls task.exception()) from logging the cancellation as an error.
            pass
        finally:
            self.count("open_connections", -1)
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    def drop_connections(self) -> int:
        """Abort every open connection (the listener stays): like a server restart. Returns how many."""
        loop_thread = self._loop_thread
        if loop_thread is None:
            return 0

        async def drop() -> int:
            writers = list(self._writers)
            for writer in writers:
                writer.transport.abort()
            return len(writers)

        return loop_thread.run(drop())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (subclasses)."""
        raise NotImplementedError

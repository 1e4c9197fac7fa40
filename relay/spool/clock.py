"""The worker's time: `SystemClock` in production; tests pass a clock they advance themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time (epoch seconds, for ages and schedules) and waiting for a deadline."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def wait(self, deadline: float, wake: asyncio.Event) -> None:
        """Return at ``deadline`` or as soon as ``wake`` is set, whichever is first."""
        ...


class SystemClock:
    """Real time."""

    def now(self) -> float:
        """`time.time`."""
        return time.time()

    async def wait(self, deadline: float, wake: asyncio.Event) -> None:
        """Sleep until ``deadline`` unless woken."""
        delay = deadline - time.time()
        if delay <= 0 or wake.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)


class ManualClock:
    """A clock that moves only when told (`advance`); waiting never sleeps for real."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.time = start
        self._waiters: set[asyncio.Event] = set()

    def now(self) -> float:
        """The current fake time."""
        return self.time

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every waiter (each re-checks its own deadline)."""
        self.time += seconds
        for wake in list(self._waiters):
            wake.set()

    async def wait(self, deadline: float, wake: asyncio.Event) -> None:
        """Wait until woken (by ``wake`` or `advance`) once ``deadline`` is not passed yet."""
        if deadline <= self.time or wake.is_set():
            return
        self._waiters.add(wake)
        try:
            await wake.wait()
        finally:
            self._waiters.discard(wake)

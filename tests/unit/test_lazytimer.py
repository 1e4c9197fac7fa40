"""relay.lazytimer.LazyDeadline: exact expiry of the latest deadline with few armed timers."""

from __future__ import annotations

import asyncio
import gc
import weakref

from relay.lazytimer import LazyDeadline


class _Counting:
    """Counts the loop timers armed through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.armed = loop, 0

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, callback, *args):  # type: ignore[no-untyped-def]
        self.armed += 1
        return self.loop.call_at(when, callback, *args)


def test_expires_once_at_the_latest_deadline():
    """Moving the deadline forward postpones expiry to exactly the last one; it fires once."""

    async def run() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        done = asyncio.Event()
        deadline = LazyDeadline(loop, lambda: (fired.append(loop.time()), done.set()))
        deadline.set(0.05)
        for _ in range(3):
            await asyncio.sleep(0.03)
            deadline.set(0.05)
        last_set = loop.time()
        await asyncio.wait_for(done.wait(), 5)
        return fired, last_set

    fired, last_set = asyncio.run(run())
    assert len(fired) == 1 and fired[0] >= last_set + 0.05 - 0.002


def test_many_moves_arm_one_timer():
    """A thousand deadline moves within one period arm a single loop timer."""

    async def run() -> int:
        counting = _Counting(asyncio.get_running_loop())
        deadline = LazyDeadline(counting, lambda: None)  # type: ignore[arg-type]
        for _ in range(1000):
            deadline.set(60)
        deadline.cancel()
        return counting.armed

    assert asyncio.run(run()) == 1


def test_earlier_deadline_replaces_the_armed_timer():
    """A shorter timeout after a long one expires at the short one."""

    async def run() -> float:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        deadline = LazyDeadline(loop, done.set)
        deadline.set(60)
        started = loop.time()
        deadline.set(0.05)
        await asyncio.wait_for(done.wait(), 5)
        return loop.time() - started

    assert asyncio.run(run()) < 5


def test_cleared_deadline_does_not_expire():
    """After clear() the armed timer fires without calling back (a later deadline is the witness)."""

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        calls: list[str] = []
        witness_done = asyncio.Event()
        cleared = LazyDeadline(loop, lambda: calls.append("cleared"))
        witness = LazyDeadline(loop, lambda: (calls.append("witness"), witness_done.set()))
        cleared.set(0.02)
        cleared.clear()
        witness.set(0.1)
        await asyncio.wait_for(witness_done.wait(), 5)
        return calls

    assert asyncio.run(run()) == ["witness"]


def test_cancel_releases_the_owner_and_ignores_later_sets():
    """cancel(): the callback's owner can be collected, and set() arms nothing any more."""

    class Owner:
        def expired(self) -> None:
            raise AssertionError("a cancelled deadline must not call back")

    async def run() -> tuple[bool, int]:
        counting = _Counting(asyncio.get_running_loop())
        owner = Owner()
        ref = weakref.ref(owner)
        deadline = LazyDeadline(counting, owner.expired)  # type: ignore[arg-type]
        deadline.set(0.01)
        deadline.cancel()
        armed = counting.armed
        deadline.set(0.01)
        del owner
        gc.collect()
        await asyncio.sleep(0)
        return ref() is None, counting.armed - armed

    collected, armed_after_cancel = asyncio.run(run())
    assert collected and armed_after_cancel == 0

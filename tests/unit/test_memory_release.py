"""The idle memory release: when it fires, and that it runs on the loop without blocking it."""

from __future__ import annotations

import asyncio
import gc

from relay.memory_release import IdleRelease, release, release_when_idle


def test_no_release_without_work() -> None:
    """An idle relay that did nothing since the last release is left alone."""
    policy = IdleRelease(interval_s=5.0)
    assert [policy.observe(cpu) for cpu in (1.0, 1.01, 1.02, 1.03)] == [False, False, False, False]


def test_no_release_while_busy() -> None:
    """While the relay keeps using CPU (a burst in progress), nothing is collected."""
    policy = IdleRelease(interval_s=5.0)
    assert [policy.observe(cpu) for cpu in (0.0, 2.0, 4.0, 6.0)] == [False, False, False, False]


def test_release_once_when_work_ends() -> None:
    """The first idle interval after work releases once; further idle intervals do not."""
    policy = IdleRelease(interval_s=5.0)
    seen = [policy.observe(cpu) for cpu in (0.0, 3.0, 3.05, 3.06, 3.07)]
    assert seen == [False, False, True, False, False]


def test_release_again_after_new_work() -> None:
    """A second burst after a release earns a second release."""
    policy = IdleRelease(interval_s=5.0)
    seen = [policy.observe(cpu) for cpu in (0.0, 3.0, 3.01, 6.0, 6.01)]
    assert seen == [False, False, True, False, True]


def test_release_collects_cycles() -> None:
    """release() frees objects that only the cycle collector can free."""

    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    for _ in range(10):
        Node()
    assert release() >= 10


async def test_loop_releases_after_work() -> None:
    """release_when_idle calls the release when the injected CPU clock shows work, then idleness."""
    readings = iter([0.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    released = asyncio.Event()

    def cpu() -> float:
        value = next(readings, 5.0)
        return value

    class Spy(IdleRelease):
        def observe(self, cpu_s: float) -> bool:
            fired = super().observe(cpu_s)
            if fired:
                released.set()
            return fired

    task = asyncio.ensure_future(release_when_idle(Spy(interval_s=0.01), cpu))
    try:
        await asyncio.wait_for(released.wait(), 5)
    finally:
        task.cancel()

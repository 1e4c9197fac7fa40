"""Give memory back after a burst: when the relay turns idle, collect cycles and trim the C heap.

Measured with ``python -m bench.memory`` (bench/README.md): after a burst of sessions the relay's
RSS stayed ~30-60 MiB above a fresh relay's although the live Python objects had not grown. Two
things held it: every aiosmtpd session object is in a reference cycle (its command and AUTH tables
hold bound methods of itself), so a closed session, with its buffers, waits for the cycle
collector's oldest generation; and glibc keeps freed heap memory (from TLS records, large reads)
mapped. `IdleRelease` decides when: some CPU was spent since the last release (there was work)
and almost none in the last interval (the burst is over), so the collection never stalls a busy
loop. `release` then runs ``gc.collect()`` and glibc's ``malloc_trim(0)`` (a no-op elsewhere).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0


@dataclass
class IdleRelease:
    """When to release, from the process CPU time seen at each check (pure: no clock of its own)."""

    interval_s: float = CHECK_INTERVAL_S
    idle_fraction: float = 0.02  # at most this share of one CPU in the last interval counts as idle
    min_work_s: float = 0.2  # CPU seconds since the last release that make a release worthwhile
    _last_cpu: float | None = None
    _released_at_cpu: float = 0.0

    def observe(self, cpu_s: float) -> bool:
        """Record the CPU time at one check; True when memory should be released now."""
        last, self._last_cpu = self._last_cpu, cpu_s
        if last is None:
            self._released_at_cpu = cpu_s
            return False
        idle = cpu_s - last <= self.idle_fraction * self.interval_s
        if idle and cpu_s - self._released_at_cpu >= self.min_work_s:
            self._released_at_cpu = cpu_s
            return True
        return False


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS ...)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


_TRIM = _malloc_trim()


def release() -> int:
    """Collect reference cycles, then hand free heap pages back to the OS; return objects collected."""
    collected = gc.collect()
    if _TRIM is not None:
        _TRIM(0)
    return collected


async def release_when_idle(policy: IdleRelease | None = None,
                            cpu: Callable[[], float] = time.process_time) -> None:
    """Check every ``policy.interval_s`` and release when `IdleRelease` says so (runs until cancelled)."""
    policy = policy or IdleRelease()
    policy.observe(cpu())
    while True:
        await asyncio.sleep(policy.interval_s)
        if policy.observe(cpu()):
            started = time.perf_counter()
            collected = release()
            log.debug("idle after work: released memory (%d objects collected, %.1f ms)", collected,
                      (time.perf_counter() - started) * 1000)
            policy.observe(cpu())  # the release's own CPU is not work

"""A per-mailbox cap on concurrent upstream sessions, with a bounded wait for a free slot.

Providers limit concurrent sessions per mailbox: Exchange Online accepts at most 3 concurrent
SMTP AUTH submissions and answers a 4th with ``432 4.3.2 ... Concurrent connections limit
exceeded``. Without a cap, 20 concurrent app connections on one account mean 17 upstream
refusals; with it, the burst is smoothed locally: a session over the cap waits (FIFO) for a slot
up to ``wait_s``, then gets `UpstreamBusy` (which the SMTP side answers with ``451 4.3.2``).

Slots are keyed by (service, upstream host, mailbox), so two accounts on one mailbox share the
cap. `Slot.release` is idempotent: the session's close path and the error path may both call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from dataclasses import dataclass, field

from relay.errors import UpstreamBusy

SlotKey = tuple[str, str, str]


@dataclass
class _Slots:
    used: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class Slot:
    """One held upstream session slot; `release` gives it back (once, idempotent)."""

    __slots__ = ("_key", "_limiter", "released")

    def __init__(self, limiter: UpstreamSlots | None, key: SlotKey) -> None:
        self._limiter = limiter
        self._key = key
        self.released = limiter is None

    def release(self) -> None:
        """Free the slot and wake the next waiter (no-op after the first call)."""
        if self.released:
            return
        self.released = True
        assert self._limiter is not None
        self._limiter._free(self._key)


class UpstreamSlots:
    """Caps concurrent upstream sessions per (service, host, mailbox); waits up to ``wait_s``."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._slots: dict[SlotKey, _Slots] = {}

    def in_use(self, key: SlotKey) -> int:
        """Slots currently held for ``key``."""
        slots = self._slots.get(key)
        return slots.used if slots else 0

    def waiting(self, key: SlotKey) -> int:
        """Sessions currently waiting for a slot of ``key``."""
        slots = self._slots.get(key)
        return len(slots.waiters) if slots else 0

    async def acquire(self, key: SlotKey, cap: int | None, *, account: str, setting: str,
                      wait_s: float | None = None) -> Slot:
        """Take a slot for ``key`` (``cap`` None or 0: unlimited, nothing is counted).

        Raises `UpstreamBusy` naming ``setting`` when no slot frees up within ``wait_s`` (default:
        the limiter's).
        """
        wait = self.wait_s if wait_s is None else wait_s
        if not cap:
            return Slot(None, key)
        slots = self._slots.setdefault(key, _Slots())
        if slots.used < cap and not slots.waiters:
            slots.used += 1
            return Slot(self, key)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), wait)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return Slot(self, key)  # handed over just as the wait ran out: keep it
            waiter.cancel()
            _discard(slots, waiter)
            raise UpstreamBusy(
                f"all {cap} upstream sessions allowed for {key[2]} on {key[1]} stayed busy for "
                f"{wait:g}s ({setting}; limits.upstream_slot_wait_s)", account=account) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free(key)  # we were handed a slot but are going away: pass it on
            else:
                waiter.cancel()
                _discard(slots, waiter)
            raise
        return Slot(self, key)

    def _free(self, key: SlotKey) -> None:
        slots = self._slots.get(key)
        if slots is None:
            return
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        slots.used -= 1
        if slots.used <= 0 and not slots.waiters:
            del self._slots[key]


def _discard(slots: _Slots, waiter: asyncio.Future[None]) -> None:
    with contextlib.suppress(ValueError):
        slots.waiters.remove(waiter)


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UpstreamSlots] = weakref.WeakKeyDictionary()


def loop_slots() -> UpstreamSlots:
    """The limiter shared by everything on the running event loop (POP3 sessions use it)."""
    loop = asyncio.get_running_loop()
    slots = _PER_LOOP.get(loop)
    if slots is None:
        slots = _PER_LOOP[loop] = UpstreamSlots(wait_s=60.0)
    return slots


def smtp_slot_key(host: str, mailbox: str) -> SlotKey:
    """The key for an upstream SMTP session of ``mailbox`` at ``host``."""
    return ("smtp", host.lower(), mailbox.lower())


def pop3_slot_key(host: str, mailbox: str) -> SlotKey:
    """The key for an upstream POP3 session of ``mailbox`` at ``host``."""
    return ("pop3", host.lower(), mailbox.lower())

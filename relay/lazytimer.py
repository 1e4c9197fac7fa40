"""A deadline that moves on every command but arms an event-loop timer only now and then.

A per-command timeout done the usual way (``loop.call_later`` + ``cancel``, or ``asyncio.timeout``
with its context manager) creates and cancels a timer handle per command: a measurable share of
the relay's per-message CPU (bench/README.md, "Against emailproxy"). `LazyDeadline` keeps one
timer armed and only moves a number: when the timer fires before the current deadline, it re-arms
itself for the rest; only a deadline *earlier* than the armed timer replaces it. So a session
busy with many short commands arms about one timer per timeout period instead of one per command,
and expiry is still exact (the callback runs once the latest deadline has passed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_RESOLUTION_S = 0.001
"""uvloop keeps time and timers in milliseconds: a timer may fire up to this much early."""


class LazyDeadline:
    """Call ``on_expiry`` once the deadline set last (`set`) has passed, unless `clear` came first."""

    __slots__ = ("_armed_at", "_deadline", "_handle", "_loop", "_on_expiry", "_stopped")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], object]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._deadline: float | None = None  # loop time; None: nothing is timed
        self._armed_at: float | None = None  # when the armed timer fires; None: none armed
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False

    @property
    def deadline(self) -> float | None:
        """The loop time at which ``on_expiry`` is due (None: cleared)."""
        return self._deadline

    def set(self, delay_s: float) -> None:
        """Expire ``delay_s`` seconds from now (replacing any earlier deadline); no-op once cancelled."""
        if self._stopped:
            return
        deadline = self._deadline = self._loop.time() + delay_s
        armed_at = self._armed_at
        if armed_at is not None and armed_at <= deadline:
            return  # the armed timer fires first and re-arms for the rest
        if self._handle is not None:
            self._handle.cancel()
        self._arm(deadline)

    def clear(self) -> None:
        """Nothing is timed any more (an armed timer fires once more and does nothing)."""
        self._deadline = None

    def cancel(self) -> None:
        """Stop for good: no timer, no reference to the callback's owner (no cycle left behind)."""
        self._stopped = True
        self._on_expiry = _nothing
        self._deadline = self._armed_at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fired)

    def _fired(self) -> None:
        self._armed_at = None
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return
        if deadline - self._loop.time() > _RESOLUTION_S:
            self._arm(deadline)
            return
        self._deadline = None
        self._on_expiry()


def _nothing() -> None:
    """The callback of a cancelled deadline."""

"""Does a closed session leave reference cycles behind? (bench/README.md, memory)

A session object left in a reference cycle is freed only by the cycle collector's next full pass,
with everything it holds (buffers, transports, frames); during a burst of connections those wait
by the thousand. The tests record a weak reference to every session object a listener creates
(`track`), turn the automatic cycle collector off (`no_cycle_collector`), run real sessions over
loopback sockets and then wait (with a deadline) for every weak reference to die: only reference
counting can free them while the collector is off. On failure the message names what still points
at a session.
"""

from __future__ import annotations

import gc
import time
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from support.app_harness import AppRelay, wait_settled


def track(monkeypatch: pytest.MonkeyPatch, cls: type,
          only: Callable[[], bool] | None = None) -> list[weakref.ref[Any]]:
    """Weak references to every ``cls`` instance constructed from now on (appended as made);
    ``only``: record just those constructed while it returns True (say, on the relay's thread)."""
    refs: list[weakref.ref[Any]] = []
    original: Callable[..., None] = getattr(cls, "__init__")  # noqa: B009 - mypy refuses cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if only is None or only():
            refs.append(weakref.ref(self))

    monkeypatch.setattr(cls, "__init__", init)
    return refs


@contextmanager
def no_cycle_collector() -> Iterator[None]:
    """Collect once, then keep the automatic cycle collector off inside (restored after)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _describe(obj: object) -> str:
    if isinstance(obj, types.MethodType):
        return f"bound method {obj.__func__.__qualname__}"
    if isinstance(obj, types.FrameType):
        return f"frame of {obj.f_code.co_qualname}"
    if isinstance(obj, dict):
        return f"dict with keys {sorted(map(str, obj))[:8]}"
    return type(obj).__qualname__


def holders(obj: object) -> list[str]:
    """What points at ``obj`` (for failure messages; this module's own frames left out)."""
    here = __file__
    return sorted({_describe(r) for r in gc.get_referrers(obj)
                   if not (isinstance(r, types.FrameType) and r.f_code.co_filename == here)
                   and not isinstance(r, list)})


def assert_freed(refs: list[weakref.ref[Any]], what: str, timeout_s: float = 10.0) -> None:
    """Wait until every weakly referenced object is gone; fail naming what holds the first live one.

    Call it with the collector off (`no_cycle_collector`) and after the sessions ended."""
    assert refs, f"no {what} was created"
    deadline = time.monotonic() + timeout_s
    while any(ref() is not None for ref in refs):
        if time.monotonic() > deadline:
            alive = next(obj for obj in (ref() for ref in refs) if obj is not None)
            count = sum(ref() is not None for ref in refs)
            raise AssertionError(
                f"{count} of {len(refs)} closed {what} object(s) still alive {timeout_s} s after the "
                f"end without the cycle collector (a reference cycle); one is held by: "
                f"{holders(alive)}")
        time.sleep(0.02)


def assert_ended_sessions_freed(relay: AppRelay, monkeypatch: pytest.MonkeyPatch, cls: type,
                                 endings: list[Callable[[Any], None]], what: str) -> None:
    """Run each of ``endings`` (a function ending one session on ``relay``) with the cycle collector
    off; every ``cls`` session they made must be freed by reference counting alone."""
    sessions = track(monkeypatch, cls)
    with no_cycle_collector():
        for end_session in endings:
            end_session(relay)
        wait_settled(relay)
        assert len(sessions) == len(endings)
        assert_freed(sessions, what)

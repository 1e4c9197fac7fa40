"""Which asyncio event loop `relay serve` runs on: uvloop when it is installed, else asyncio's own.

uvloop (libuv, in C) does a relay's per-command work (socket reads and writes, TLS records,
timers) with less Python per call than the selector loop; in bench/ it lifted relay throughput
by ~10-30% for small messages. It is a dependency on CPython outside Windows; ``--event-loop
asyncio`` or ``RELAY_EVENT_LOOP=asyncio`` chooses the standard loop (e.g. to rule it out when
chasing a problem).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from relay.errors import ConfigError

T = TypeVar("T")
LoopChoice = Literal["auto", "uvloop", "asyncio"]
LoopKind = Literal["uvloop", "asyncio"]
CHOICES: tuple[LoopChoice, ...] = ("auto", "uvloop", "asyncio")
ENV_VAR = "RELAY_EVENT_LOOP"


def resolve(choice: str | None = None, *, uvloop_installed: bool | None = None) -> LoopKind:
    """The loop to use for ``choice`` (None: $RELAY_EVENT_LOOP, else ``auto``)."""
    setting = "--event-loop" if choice else ENV_VAR
    choice = (choice or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if choice not in CHOICES:
        raise ConfigError(setting, f"unknown event loop {choice!r}; use one of {', '.join(CHOICES)}")
    if uvloop_installed is None:
        uvloop_installed = importlib.util.find_spec("uvloop") is not None
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed):
        return "asyncio"
    if not uvloop_installed:
        raise ConfigError(setting, "uvloop is not installed; `pip install uvloop` or choose "
                                   "--event-loop asyncio")
    return "uvloop"


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop constructor for ``asyncio.Runner`` (None: asyncio's default)."""
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415 - optional at import time (resolve() checked it)

        return uvloop.new_event_loop
    return None


def describe(kind: str) -> str:
    """``uvloop 0.22.1`` / ``asyncio`` for the start-up log."""
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415

        return f"uvloop {uvloop.__version__}"  # type: ignore[attr-defined]  # not re-exported in its stubs
    return "asyncio"


def run(main: Coroutine[Any, Any, T], kind: str) -> T:
    """``asyncio.run(main)`` on the loop ``kind`` (from `resolve`)."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)

"""Suite-wide settings: the event loop the async tests run on, and the hypothesis profiles.

`relay serve` runs on uvloop when it is installed (relay/eventloop.py), so the tests do too;
``RELAY_EVENT_LOOP=asyncio pytest`` runs them on asyncio's own loop, the fallback where uvloop
is not available.

Hypothesis profiles (``pytest --hypothesis-profile=NAME``; the default is ``ci``): the fuzz tests
(tests/reliability/test_rel_fuzz_*.py) take their example count from the profile through
``support.fuzz.FUZZ``; inputs that once broke a parser are pinned with ``@example`` there, so
every run tries them whatever the count.

- ``ci``: 1000 examples per fuzz property (the suite's 10-minute budget on 2 shared cores); each
  example must finish within ``FUZZ_DEADLINE`` (a parser that goes quadratic fails, not times out).
- ``thorough``: 10 000 examples per fuzz property, for a deliberate fuzzing run after parser work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings

from relay import eventloop

FUZZ_DEADLINE = timedelta(seconds=3)
"""Per-example limit for the fuzz properties: their examples take microseconds to milliseconds,
so this only trips on a pathological (super-linear) case, with headroom for a loaded CI machine."""

settings.register_profile("ci", max_examples=1_000, deadline=FUZZ_DEADLINE,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=10_000, deadline=FUZZ_DEADLINE,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[..., object]]:
    """pytest-asyncio's hook: one loop factory, the one `relay serve` would choose."""
    kind = eventloop.resolve(None)
    return {kind: eventloop.loop_factory(kind) or asyncio.new_event_loop}

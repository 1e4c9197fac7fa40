"""Suite-wide settings: the event loop the async tests run on.

`relay serve` runs on uvloop when it is installed (relay/eventloop.py), so the tests do too;
``RELAY_EVENT_LOOP=asyncio pytest`` runs them on asyncio's own loop, the fallback where uvloop
is not available.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from relay import eventloop


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[..., object]]:
    """pytest-asyncio's hook: one loop factory, the one `relay serve` would choose."""
    kind = eventloop.resolve(None)
    return {kind: eventloop.loop_factory(kind) or asyncio.new_event_loop}

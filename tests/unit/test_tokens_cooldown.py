"""Unit tests for the cool-down after the upstream refuses a freshly issued token (issue 22 item 9)."""

from __future__ import annotations

import pytest

from relay.secret import Secret
from relay.tokens.cooldown import (
    FRESH_WINDOW_S,
    MAX_COOLDOWN_S,
    RefusedTokenCooldown,
    UpstreamAuthCoolingDown,
)


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refused_fresh_token_starts_a_doubling_cooldown() -> None:
    """The fresh token refused: cool-down of the base; refused again right after: twice as long."""
    clock = Clock()
    cool = RefusedTokenCooldown(10.0, clock=clock)
    cool.check("a", Secret("old"))  # an ordinary refused token: a refresh is allowed
    cool.issued("a", Secret("fresh1"))
    with pytest.raises(UpstreamAuthCoolingDown):
        cool.check("a", Secret("fresh1"))
    clock.now += 9
    with pytest.raises(UpstreamAuthCoolingDown):
        cool.check("a", Secret("anything"))
    clock.now += 1.5
    cool.check("a", Secret("fresh1"))  # over: one more refresh is allowed
    cool.issued("a", Secret("fresh2"))
    with pytest.raises(UpstreamAuthCoolingDown, match="20 s"):
        cool.check("a", Secret("fresh2"))
    cool.check("b", Secret("fresh2"))  # other accounts are not affected


def test_old_fresh_token_and_long_quiet_reset() -> None:
    """A token refused long after its issue is an ordinary revocation; a long quiet period resets
    the doubling to the base."""
    clock = Clock()
    cool = RefusedTokenCooldown(10.0, clock=clock)
    cool.issued("a", Secret("t"))
    clock.now += FRESH_WINDOW_S + 1
    cool.check("a", Secret("t"))  # no cool-down
    cool.issued("a", Secret("t2"))
    with pytest.raises(UpstreamAuthCoolingDown):
        cool.check("a", Secret("t2"))
    clock.now += 10 + MAX_COOLDOWN_S
    cool.check("a", None)
    cool.issued("a", Secret("t3"))
    with pytest.raises(UpstreamAuthCoolingDown, match="10 s"):
        cool.check("a", Secret("t3"))

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
    cool.refused("a", Secret("old"))  # a token no forced refresh issued: no cool-down
    cool.check("a")
    cool.issued("a", Secret("fresh1"))
    cool.check("a")  # issued, not yet refused: refreshes are allowed
    cool.refused("a", Secret("fresh1"))
    with pytest.raises(UpstreamAuthCoolingDown, match="10 s"):
        cool.check("a")
    clock.now += 9
    with pytest.raises(UpstreamAuthCoolingDown):
        cool.check("a")
    clock.now += 1.5
    cool.check("a")  # over: one more refresh is allowed
    cool.issued("a", Secret("fresh2"))
    cool.refused("a", Secret("fresh2"))
    with pytest.raises(UpstreamAuthCoolingDown, match="20 s"):
        cool.check("a")
    cool.check("b")  # other accounts are not affected


def test_a_later_refresh_naming_the_issued_token_is_no_refusal() -> None:
    """A token that was issued and later refused by another session (it worked, then the provider
    revoked it, e.g. strict rotation across replicas) does not cool down: only a `refused` report
    does; and a refusal of an older token after a newer one was issued does not either."""
    clock = Clock()
    cool = RefusedTokenCooldown(10.0, clock=clock)
    for n in range(50):
        cool.issued("a", Secret(f"t{n}"))
        clock.now += 1
        cool.check("a")
    cool.refused("a", Secret("t48"))
    cool.check("a")


def test_old_fresh_token_and_long_quiet_reset() -> None:
    """A token refused long after its issue is an ordinary revocation; a long quiet period resets
    the doubling to the base."""
    clock = Clock()
    cool = RefusedTokenCooldown(10.0, clock=clock)
    cool.issued("a", Secret("t"))
    clock.now += FRESH_WINDOW_S + 1
    cool.refused("a", Secret("t"))
    cool.check("a")  # no cool-down
    cool.issued("a", Secret("t2"))
    cool.refused("a", Secret("t2"))
    with pytest.raises(UpstreamAuthCoolingDown):
        cool.check("a")
    clock.now += 10 + MAX_COOLDOWN_S
    cool.check("a")
    cool.issued("a", Secret("t3"))
    cool.refused("a", Secret("t3"))
    with pytest.raises(UpstreamAuthCoolingDown, match="10 s"):
        cool.check("a")

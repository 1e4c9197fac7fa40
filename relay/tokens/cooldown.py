"""Cool-down after the upstream refuses a freshly issued token (issue 22 item 9).

When the upstream refuses even a token the relay just obtained by a forced refresh, the cause is
not the token (SMTP AUTH disabled for the mailbox, POP access off, a permission missing): every
further refresh would be refused too, and each session forcing one would hammer the provider's
token endpoint (Microsoft throttles the client ID then, for every account). So when the login
retried with that fresh token is refused (`relay.upstream.login.login_with_refresh` reports it
through `refused`), a cool-down starts: forced refreshes of the account fail at once (the session
answers 454 / -ERR) without a token request until it ends. Each cool-down that follows within
MAX_COOLDOWN_S of the last doubles, up to that maximum.

Only that direct observation starts a cool-down. A later forced refresh naming the last issued
token does not: the token may have worked and then been revoked (a provider with strict
rotation, a sign-in elsewhere), and it gets its normal single refresh. A token only counts as
fresh for FRESH_WINDOW_S after it was issued.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.errors import UpstreamAuthRejected
from relay.secret import Secret

log = logging.getLogger("relay.tokens")

MAX_COOLDOWN_S = 900.0
FRESH_WINDOW_S = 600.0


class UpstreamAuthCoolingDown(UpstreamAuthRejected):
    """The upstream refused a fresh token recently: no new token is requested until ``until_s``."""


@dataclass
class _AccountState:
    fresh: bytes | None = None  # digest of the last token issued by a forced refresh
    issued_at: float = 0.0
    until: float = 0.0  # end of the current cool-down (monotonic)
    level: int = -1  # doublings of the base cool-down; -1 before the first


def _digest(token: Secret) -> bytes:
    return hashlib.sha256(token.reveal().encode()).digest()


class RefusedTokenCooldown:
    """Per-account cool-down state: `check` before a forced refresh, `issued` after one, `refused`
    when the upstream refused the token it issued."""

    def __init__(self, base_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s = base_s
        self._clock = clock
        self._accounts: dict[str, _AccountState] = {}

    def check(self, account: str) -> None:
        """Raise UpstreamAuthCoolingDown while the account cools down."""
        state = self._accounts.get(account)
        if state is None:
            return
        now = self._clock()
        if now < state.until:
            raise self._error(account, state.until - now)

    def refused(self, account: str, token: Secret) -> None:
        """The upstream refused ``token``: when it is the one the last forced refresh issued (and
        still fresh), start the next cool-down."""
        state = self._accounts.get(account)
        if state is None or state.fresh is None:
            return
        now = self._clock()
        if state.fresh != _digest(token) or now - state.issued_at >= FRESH_WINDOW_S:
            return
        quiet = now - state.until >= MAX_COOLDOWN_S
        state.level = 0 if quiet else state.level + 1
        delay = min(self.base_s * 2.0 ** min(state.level, 30), max(self.base_s, MAX_COOLDOWN_S))
        state.until, state.fresh = now + delay, None
        log.warning("account '%s': the upstream refused a token issued %.0f s ago by a refresh, so a "
                    "new token would be refused too (SMTP AUTH / POP access disabled for the mailbox, "
                    "or the app lacks the permission?); sessions get a temporary error and no token "
                    "is requested for %.0f s", account, now - state.issued_at, delay)

    def issued(self, account: str, token: Secret) -> None:
        """Remember the token a forced refresh handed out after the upstream refused another."""
        state = self._accounts.setdefault(account, _AccountState())
        state.fresh, state.issued_at = _digest(token), self._clock()

    def _error(self, account: str, remaining_s: float) -> UpstreamAuthCoolingDown:
        return UpstreamAuthCoolingDown(
            f"account '{account}': the upstream refused a freshly issued token; not requesting "
            f"another for {remaining_s:.0f} s (check that SMTP AUTH / POP access is enabled for the "
            f"mailbox and the app has the permission, then wait or restart the relay)",
            account=account)

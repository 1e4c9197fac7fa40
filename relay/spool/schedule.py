"""Per-account delivery pacing and what a delivery attempt's outcome means (pure, no I/O).

Exchange Online allows 30 messages a minute and 3 concurrent submissions per mailbox
(shared/PROTOCOLS.md 9.3); over that it answers ``432 4.3.2``. So each account has its own
`AccountPace`: at most ``max_concurrency`` attempts at once, at most ``max_messages_per_minute``
attempts started in any 60 s, and a backoff for the whole account (1 min doubling to 1 h by
default; an upstream's ``Retry-After``, as Graph sends, is honoured instead) after a throttling
reply (421, 451, x.3.2) or a connection/login failure. A throttle
also lowers the account's concurrency by one (other clients may share the mailbox's 3 sessions);
`RAISE_AFTER` successes raise it again, up to ``max_concurrency``. Other accounts are never
slowed by one account's backoff.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from relay.smtp.reply import SmtpReply

WINDOW_S = 60.0
RAISE_AFTER = 20  # successful attempts before a throttled account may use one more session
MIN_WAIT_S = 1.0  # the shortest backoff an upstream's Retry-After can ask for (no hammering)


def is_throttling(reply: SmtpReply) -> bool:
    """421 (service closing), 451 (local error, often load) or any x.3.2 (system not accepting)."""
    return reply.code in (421, 451) or (reply.code < 500 and (reply.enhanced_code or "").endswith(".3.2"))


def retry_delay_s(attempts: int, initial_s: float, max_s: float) -> float:
    """Exponential: ``initial_s`` after the first failed attempt, doubling, at most ``max_s``."""
    if attempts <= 0:
        return 0.0
    return float(min(max_s, initial_s * 2 ** min(attempts - 1, 32)))


class Verdict(Enum):
    """What one attempt means for the account's pace."""

    OK = "ok"  # the upstream answered normally (accepted or refused on its merits)
    THROTTLED = "throttled"  # back the whole account off


@dataclass
class AccountPace:
    """One account's concurrency, rate window and backoff."""

    max_concurrency: int
    per_minute: int
    retry_initial_s: float
    retry_max_s: float
    in_flight: int = 0
    started: deque[float] = field(default_factory=deque)
    backoff_until: float = 0.0
    backoff_s: float = 0.0
    concurrency: int = 0  # the cap in force: lowered by throttling, raised again by successes
    successes: int = 0

    def __post_init__(self) -> None:
        self.concurrency = self.max_concurrency

    def next_start(self, now: float) -> float | None:
        """When the next attempt may start (``now`` or later); None while at the concurrency cap."""
        if self.in_flight >= min(self.concurrency, self.max_concurrency):
            return None
        while self.started and self.started[0] <= now - WINDOW_S:
            self.started.popleft()
        at = max(now, self.backoff_until)
        if len(self.started) >= self.per_minute:
            at = max(at, self.started[len(self.started) - self.per_minute] + WINDOW_S)
        return at

    def start(self, now: float) -> None:
        """An attempt starts now."""
        self.in_flight += 1
        self.started.append(now)

    def finish(self, verdict: Verdict, now: float, wait_s: float | None = None) -> None:
        """An attempt ended: throttling doubles the account's backoff, anything else clears it.

        ``wait_s`` is how long the upstream asked us to wait (Graph's ``Retry-After``): it replaces
        the doubling for this backoff, at least `MIN_WAIT_S` and at most ``retry_max_s``."""
        self.in_flight -= 1
        if verdict is Verdict.THROTTLED:
            self.successes = 0
            asked = None if wait_s is None else min(self.retry_max_s, max(MIN_WAIT_S, wait_s))
            if now < self.backoff_until:
                # Another attempt of the same outage already backed the account off; a longer
                # Retry-After from the upstream still extends the wait.
                if asked is not None:
                    self.backoff_until = max(self.backoff_until, now + asked)
                return
            # Fewer sessions at once after a throttle (the mailbox may have other senders too).
            self.concurrency = max(1, min(self.concurrency, self.max_concurrency) - 1)
            if asked is not None:
                self.backoff_s = asked
            else:
                self.backoff_s = self.retry_initial_s if self.backoff_s == 0 else min(
                    self.retry_max_s, self.backoff_s * 2)
            self.backoff_until = now + self.backoff_s
        else:
            self.backoff_s = 0.0
            self.backoff_until = 0.0
            self.successes += 1
            if self.concurrency < self.max_concurrency and self.successes >= RAISE_AFTER:
                self.concurrency += 1  # additive increase, like TCP after a loss
                self.successes = 0

    def clear_backoff(self) -> None:
        """`relay queue retry`: try again now."""
        self.backoff_s = 0.0
        self.backoff_until = 0.0

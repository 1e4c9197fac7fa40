"""RelayMetrics: the one observer the mail paths report to, and the Prometheus metrics behind it.

The SMTP and POP3 sessions and the token manager call a handful of methods (session_started,
session_ended, message_finished, message_fetched, upstream_login, upstream_failure,
local_auth_failed, token_refreshed). Each is O(1): a counter or histogram update on a label child
and a small per-account record for `/status`. Gauges that describe state (token expiry, needs
re-authorization, pool sessions) are set when `/metrics` is scraped, not on the mail path.

Labels come only from the configuration (account names) or fixed sets (protocol, outcome, reply
class), so the number of time series is bounded. A name not in the configuration is counted as
``other``. `NULL_OBSERVER` is what the mail paths use when no admin listener is configured.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PREFIX = "xoauth2relay"
OTHER = "other"
PROTOCOLS = ("smtp", "pop3", "imap")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def reply_class(code: int | None) -> str:
    """``2xx`` / ``3xx`` / ``4xx`` / ``5xx`` for a reply code, ``error`` when there was no reply."""
    if code is None or not 200 <= code <= 599:
        return "error"
    return f"{code // 100}xx"


def message_outcome(code: int | None) -> str:
    """The outcome label of a message from the upstream's final reply code."""
    if code is not None and 200 <= code < 300:
        return "delivered"
    if code is not None and 500 <= code < 600:
        return "refused"
    return "deferred"  # 4xx or no reply: the client keeps the message and retries


@dataclass(frozen=True)
class SpoolStats:
    """What the spool (`relay.spool.service`) reports for /metrics and the alerts, read when needed."""

    messages: int
    bytes: int
    oldest_age_s: float
    corrupt_files: int
    per_account: Mapping[str, int]
    delivered: int  # since start
    bounced: int  # since start


class RelayObserver(Protocol):
    """What the mail paths and the token manager report (see `RelayMetrics`)."""

    def session_started(self, protocol: str) -> None:
        """A client connected."""

    def session_ended(self, protocol: str, account: str | None, outcome: str) -> None:
        """A client session ended; ``outcome`` is one of SESSION_OUTCOMES."""

    def local_auth_failed(self, protocol: str) -> None:
        """A client's local login was refused."""

    def upstream_login(self, account: str, protocol: str, seconds: float, code: int | None) -> None:
        """An upstream connect + XOAUTH2 login finished (``code`` the AUTH reply, None: no reply)."""

    def upstream_failure(self, account: str, protocol: str, explanation: str) -> None:
        """The upstream failed or refused; ``explanation`` names the cause and the fix."""

    def message_finished(self, account: str, code: int | None, size: int, seconds: float) -> None:
        """The upstream answered the end of a message (``code`` None: the upstream broke)."""

    def message_fetched(self, account: str, size: int) -> None:
        """A POP3 client retrieved a message."""

    def token_refreshed(self, account: str, outcome: str, error: str | None = None) -> None:
        """A token request ended: ``ok``, ``failed`` (transient) or ``needs_authorization``."""


SESSION_OUTCOMES = ("ok", "auth_failed", "upstream_error", "client_error")


class NullObserver:
    """Reports nothing: the mail paths' default when metrics are off."""

    def session_started(self, protocol: str) -> None:
        """Ignored."""

    def session_ended(self, protocol: str, account: str | None, outcome: str) -> None:
        """Ignored."""

    def local_auth_failed(self, protocol: str) -> None:
        """Ignored."""

    def upstream_login(self, account: str, protocol: str, seconds: float, code: int | None) -> None:
        """Ignored."""

    def upstream_failure(self, account: str, protocol: str, explanation: str) -> None:
        """Ignored."""

    def message_finished(self, account: str, code: int | None, size: int, seconds: float) -> None:
        """Ignored."""

    def message_fetched(self, account: str, size: int) -> None:
        """Ignored."""

    def token_refreshed(self, account: str, outcome: str, error: str | None = None) -> None:
        """Ignored."""


NULL_OBSERVER = NullObserver()


@dataclass
class AccountActivity:
    """What `/status` shows per account besides the token state (never a token)."""

    messages_sent: int = 0
    messages_refused: int = 0
    messages_fetched: int = 0
    last_upstream_error: str | None = None
    last_upstream_error_at: float | None = None
    last_refresh_at: float | None = None
    last_refresh_outcome: str | None = None
    refresh_failing_since: float | None = None  # first failure of the current failing streak
    token_rejections: int = 0  # consecutive upstream logins refusing a token


class LatencyHistogram:
    """Bucket counts and sum of observed seconds (``counts[i]``: values <= LATENCY_BUCKETS[i], not
    cumulative; the last slot is +Inf). An observation is one bisect and two additions."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


class RelayMetrics:
    """The metrics and per-account activity of one relay process.

    The mail paths only add to plain dictionaries (no locks, no label objects: a few hundred
    nanoseconds per event); `relay.metrics_export` turns them into Prometheus families with
    prometheus_client when /metrics is scraped.
    """

    def __init__(self, accounts: Iterable[str], clock: object = time.time) -> None:
        self.accounts = frozenset(accounts)
        self.activity = {name: AccountActivity() for name in self.accounts}
        self._clock = clock if callable(clock) else time.time
        self.sessions: defaultdict[tuple[str, str], int] = defaultdict(int)  # (protocol, outcome)
        self.active: defaultdict[str, int] = defaultdict(int, dict.fromkeys(PROTOCOLS, 0))
        self.messages: defaultdict[tuple[str, str], int] = defaultdict(int)  # (account, outcome)
        self.message_bytes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.fetched: defaultdict[str, int] = defaultdict(int)
        self.replies: defaultdict[tuple[str, str, str], int] = defaultdict(int)  # (account, protocol, class)
        self.login_seconds: dict[str, LatencyHistogram] = {p: LatencyHistogram() for p in PROTOCOLS}
        self.message_seconds = LatencyHistogram()
        self.auth_failures: defaultdict[str, int] = defaultdict(int, dict.fromkeys(PROTOCOLS, 0))
        self.refreshes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.token_expiry: dict[str, float] = {}  # set at scrape time (relay.admin.report)
        self.needs_reauth: dict[str, float] = {}
        self.pool_sessions: dict[str, float] = {}
        # The spool's state, read at scrape time (set by relay.app when an account spools).
        self.spool: Callable[[], SpoolStats] | None = None
        for name in self.accounts:
            self.messages[name, "delivered"] = 0
            self.message_bytes[name, "delivered"] = 0
        # prometheus_client (with wsgiref, http.server, urllib.request ...: ~2.5 MiB) is imported
        # only here: a relay without an admin listener or alerts never builds RelayMetrics, and
        # every mail path imports this module (NULL_OBSERVER).
        from relay.metrics_export import build_registry  # noqa: PLC0415

        self.registry: CollectorRegistry = build_registry(self, LATENCY_BUCKETS)

    def add_accounts(self, names: Iterable[str]) -> None:
        """Accept these account names as labels too (a reload may add accounts)."""
        new = frozenset(names) - self.accounts
        if new:
            self.accounts = self.accounts | new
            self.activity.update({name: AccountActivity() for name in new})

    def _account(self, name: str | None) -> str:
        return name if name in self.accounts else OTHER

    def _activity(self, name: str) -> AccountActivity | None:
        return self.activity.get(name)

    # --- RelayObserver ------------------------------------------------------------------------------

    def session_started(self, protocol: str) -> None:
        """A client connected."""
        self.active[protocol] += 1

    def session_ended(self, protocol: str, account: str | None, outcome: str) -> None:
        """A client session ended."""
        self.active[protocol] -= 1
        self.sessions[protocol, outcome if outcome in SESSION_OUTCOMES else "ok"] += 1

    def local_auth_failed(self, protocol: str) -> None:
        """A client's local login was refused."""
        self.auth_failures[protocol] += 1

    def upstream_login(self, account: str, protocol: str, seconds: float, code: int | None) -> None:
        """An upstream login finished; consecutive token refusals (535) are counted for alerts."""
        label = self._account(account)
        self.replies[label, protocol, reply_class(code)] += 1
        activity = self._activity(account)
        ok = code is not None and 200 <= code < 300
        if ok:
            self.login_seconds[protocol].observe(seconds)
        if activity is not None:
            if ok:
                activity.token_rejections = 0
            elif (code is not None and code in (334, 535, 454, 530)) or code == 535:
                activity.token_rejections += 1

    def upstream_failure(self, account: str, protocol: str, explanation: str) -> None:
        """Remember the last upstream error of the account (shown by /status)."""
        activity = self._activity(account)
        if activity is not None:
            activity.last_upstream_error = explanation
            activity.last_upstream_error_at = self._clock()

    def message_finished(self, account: str, code: int | None, size: int, seconds: float) -> None:
        """Count the message and its bytes by outcome; record the latency."""
        label = self._account(account)
        outcome = message_outcome(code)
        self.messages[label, outcome] += 1
        self.message_bytes[label, outcome] += size
        self.replies[label, "smtp", reply_class(code)] += 1
        self.message_seconds.observe(seconds)
        activity = self._activity(account)
        if activity is not None:
            if outcome == "delivered":
                activity.messages_sent += 1
            elif outcome == "refused":
                activity.messages_refused += 1

    def message_fetched(self, account: str, size: int) -> None:
        """Count a POP3 retrieval."""
        self.fetched[self._account(account)] += 1
        activity = self._activity(account)
        if activity is not None:
            activity.messages_fetched += 1

    def token_refreshed(self, account: str, outcome: str, error: str | None = None) -> None:
        """Count a token request; track since when refreshes fail (for the alert threshold)."""
        self.refreshes[self._account(account), outcome] += 1
        activity = self._activity(account)
        if activity is None:
            return
        now = self._clock()
        activity.last_refresh_at = now
        activity.last_refresh_outcome = outcome
        if outcome == "ok":
            activity.refresh_failing_since = None
        elif activity.refresh_failing_since is None:
            activity.refresh_failing_since = now
        if error:
            activity.last_upstream_error = error
            activity.last_upstream_error_at = now

    # --- scrape ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client import generate_latest  # noqa: PLC0415 - see __init__

        return generate_latest(self.registry)

"""What the admin listener reports: readiness reasons and the /status document (never a token).

`collect` gathers one `RelayReport` from a running relay (`RelayView`); `readiness` and
`status_document` are pure functions of it, so `/readyz`, `/status`, `relay status` and the alerts
all say the same thing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import relay
from relay.config.model import RelayConfig
from relay.errors import RelayError
from relay.metrics import AccountActivity, RelayMetrics
from relay.tokens.manager import AccountTokenStatus, TokenManager

UNUSABLE_STATES = frozenset({"needs authorize", "not authorized"})


@dataclass(frozen=True)
class ListenerState:
    """One mail listener as the admin listener sees it."""

    name: str
    host: str
    port: int
    tls: str
    serving: bool
    active_sessions: int


class RelayView(Protocol):
    """What the admin listener and the alerts read from the running relay (RelayApp)."""

    @property
    def config(self) -> RelayConfig:
        """The running configuration."""
        ...

    @property
    def tokens(self) -> TokenManager:
        """The current token manager."""
        ...

    @property
    def metrics(self) -> RelayMetrics | None:
        """The metrics observer (None when neither admin nor alerts are configured)."""
        ...

    @property
    def started_at(self) -> float:
        """Unix time the relay started."""
        ...

    def listener_states(self) -> list[ListenerState]:
        """The enabled mail listeners."""
        ...

    def pool_sessions(self) -> dict[str, int]:
        """Pooled upstream SMTP sessions by state (``idle``, ``in_use``); empty without pooling."""
        ...


@dataclass(frozen=True)
class RelayReport:
    """A snapshot of the relay's state for /readyz, /status and the alerts."""

    config: RelayConfig
    listeners: list[ListenerState]
    tokens: list[AccountTokenStatus]
    activity: dict[str, AccountActivity]
    store_error: str | None
    started_at: float
    taken_at: float = field(default_factory=time.time)


async def collect(view: RelayView) -> RelayReport:
    """Read the token store (checking it is readable), the listeners and the account activity."""
    tokens = view.tokens
    store_error = None
    try:
        await tokens.store.load_all()
    except (RelayError, OSError) as exc:
        store_error = str(exc)
    statuses = await tokens.status()
    metrics = view.metrics
    activity = dict(metrics.activity) if metrics is not None else {}
    return RelayReport(view.config, view.listener_states(), statuses, activity, store_error, view.started_at)


def readiness(report: RelayReport) -> list[str]:
    """The reasons the relay is not ready (empty: ready)."""
    reasons = []
    for listener in report.listeners:
        if not listener.serving:
            reasons.append(f"listener {listener.name} on {listener.host}:{listener.port} is not accepting")
    if not report.listeners:
        reasons.append("no mail listener is enabled (listen.smtp.enabled, listen.pop3.enabled)")
    if report.store_error:
        reasons.append(f"token store not readable: {report.store_error}")
    for status in report.tokens:
        if status.state in UNUSABLE_STATES:
            reasons.append(f"account {status.account}: {status.state}; fix: relay authorize {status.account}")
    return reasons


def _iso(value: datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds")


def account_document(status: AccountTokenStatus, activity: AccountActivity | None,
                     config: RelayConfig) -> dict[str, object]:
    """The /status entry of one account."""
    account = config.accounts.get(status.account)
    act = activity or AccountActivity()
    needs = status.state in UNUSABLE_STATES
    return {
        "mailbox": account.mailbox if account else None,
        "credentials": status.credentials,
        "flow": status.flow,
        "grant_state": status.state,
        "needs_reauthorization": needs,
        "fix": f"relay authorize {status.account}" if needs else None,
        "access_token_expires_at": _iso(status.valid_until),
        "last_refresh_at": _iso(act.last_refresh_at) or _iso(status.obtained_at),
        "last_refresh_outcome": act.last_refresh_outcome,
        "last_token_error": status.last_error,
        "last_upstream_error": act.last_upstream_error,
        "last_upstream_error_at": _iso(act.last_upstream_error_at),
        "messages_sent": act.messages_sent,
        "messages_refused": act.messages_refused,
        "messages_fetched": act.messages_fetched,
        "sends": account is not None and account.smtp is not None,
        "fetches": account is not None and account.pop3 is not None,
    }


def status_document(report: RelayReport) -> dict[str, object]:
    """The /status JSON: version, readiness, listeners and accounts."""
    reasons = readiness(report)
    return {
        "version": relay.__version__,
        "started_at": _iso(report.started_at),
        "uptime_s": round(report.taken_at - report.started_at, 1),
        "ready": not reasons,
        "reasons": reasons,
        "token_store": {"readable": report.store_error is None, "error": report.store_error},
        "listeners": [
            {"name": ls.name, "host": ls.host, "port": ls.port, "tls": ls.tls, "accepting": ls.serving,
             "active_sessions": ls.active_sessions} for ls in report.listeners],
        "accounts": {s.account: account_document(s, report.activity.get(s.account), report.config)
                     for s in report.tokens},
    }


def update_state_gauges(metrics: RelayMetrics, report: RelayReport, pool: dict[str, int]) -> None:
    """Set the gauges that describe state (token expiry, needs re-authorization, pool) at scrape time."""
    for status in report.tokens:
        if status.account not in metrics.accounts:
            continue
        expiry = status.valid_until.timestamp() if status.valid_until else 0.0
        metrics.token_expiry[status.account] = expiry
        metrics.needs_reauth[status.account] = 1.0 if status.state in UNUSABLE_STATES else 0.0
    for state in ("idle", "in_use"):
        metrics.pool_sessions[state] = float(pool.get(state, 0))

"""Which alert conditions hold now, and the once-per-state-change tracker (pure; no I/O).

`evaluate` turns a `RelayReport` (plus what the monitor read: unsaved accounts, certificate
expiries) into the set of `Condition`s that hold. `AlertTracker.step` compares it with the last
set: a new condition fires, a lasting one repeats every ``repeat_interval_s``, a gone one sends a
recovery notice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from relay.admin.report import UNUSABLE_STATES, RelayReport
from relay.config.model import AlertsConfig
from relay.metrics import SpoolStats

AlertKind = Literal["needs_reauthorization", "refresh_failing", "token_rejected", "store_write_failing",
                    "certificate_expiring", "spool_backlog", "spool_corrupt"]
AlertEvent = Literal["firing", "repeat", "resolved"]
TITLES = {
    "needs_reauthorization": "needs re-authorization",
    "refresh_failing": "token refresh failing",
    "token_rejected": "upstream refuses fresh tokens",
    "store_write_failing": "token store cannot be written",
    "certificate_expiring": "certificate expiring",
    "spool_backlog": "spooled mail is not going out",
    "spool_corrupt": "unreadable spool files",
}


@dataclass(frozen=True)
class Condition:
    """One problem that holds now: what, for whom, why, and the command or setting that fixes it."""

    kind: AlertKind
    subject: str  # the account name, or "token store", or the certificate file
    cause: str
    fix: str
    account: str | None = None

    @property
    def key(self) -> str:
        """Identity across checks: the kind and subject (the cause text may change)."""
        return f"{self.kind}:{self.subject}"


@dataclass(frozen=True)
class Alert:
    """A notification to send."""

    event: AlertEvent
    condition: Condition
    since: float  # when the condition started (Unix time)
    at: float

    def summary(self) -> str:
        """One line for chat and the email subject."""
        c = self.condition
        who = f"account {c.account}" if c.account else c.subject
        if self.event == "resolved":
            return f"RESOLVED: {who}: {TITLES[c.kind]}"
        again = " (still)" if self.event == "repeat" else ""
        return f"ALERT{again}: {who}: {TITLES[c.kind]}"

    def text(self, relay_name: str) -> str:
        """The full message: summary, cause, fix, since when, which relay."""
        c = self.condition
        since = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        lines = [f"xoauth2-relay on {relay_name}: {self.summary()}"]
        if self.event == "resolved":
            lines.append(f"The problem that started at {since} is gone.")
        else:
            lines += [f"Cause: {c.cause}", f"Fix: {c.fix}", f"Since: {since}"]
        return "\n".join(lines)

    def fields(self, relay_name: str) -> dict[str, object]:
        """The plain JSON fields of a webhook."""
        c = self.condition
        return {"event": self.event, "alert": c.kind, "account": c.account, "subject": c.subject,
                "cause": c.cause, "fix": c.fix, "relay": relay_name,
                "since": datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds"),
                "at": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds"),
                "summary": self.summary(), "text": self.text(relay_name)}


def evaluate(report: RelayReport, alerts: AlertsConfig, now: float, *, unsaved: Iterable[str] = (),
             store_path: str = "", certificates: Mapping[str, datetime] | None = None,
             spool: SpoolStats | None = None) -> list[Condition]:
    """The conditions that hold in ``report`` at ``now`` (``spool``: the spool's state, if any)."""
    out: list[Condition] = []
    dead = set()
    for status in report.tokens:
        name = status.account
        if status.state in UNUSABLE_STATES:
            dead.add(name)
            cause = status.last_error or f"the account is {status.state}"
            if status.state == "not authorized":
                cause = ("no tokens are stored for this account: it was never authorized, or its tokens "
                         "were removed (`relay revoke`)")
            out.append(Condition("needs_reauthorization", name, cause, f"run `relay authorize {name}`", name))
    for name, act in sorted(report.activity.items()):
        if name in dead:
            continue
        since = act.refresh_failing_since
        if since is not None and now - since >= alerts.refresh_failing_after_s:
            minutes = (now - since) / 60
            out.append(Condition(
                "refresh_failing", name, f"token refresh has failed for {minutes:.0f} min: "
                f"{act.last_upstream_error or 'see the relay log'}",
                f"check that the OAuth provider is reachable (`relay check {name}`); if the grant is "
                f"dead, run `relay authorize {name}`", name))
        if act.token_rejections >= alerts.token_rejections:
            out.append(Condition(
                "token_rejected", name, f"the upstream refused {act.token_rejections} fresh tokens in a row: "
                f"{act.last_upstream_error or 'see the relay log'}",
                f"run `relay check {name}` (SMTP AUTH / POP access enabled for the mailbox? app "
                f"permissions?), then `relay authorize {name}`", name))
    unsaved = sorted(unsaved)
    if unsaved:
        out.append(Condition(
            "store_write_failing", "token store", f"new tokens of {', '.join(unsaved)} could not be saved to "
            f"{store_path or 'the token store'}; they live only in memory (a restart would lose them)",
            f"make {store_path or 'token_store.path'} and its directory writable by the relay's user and "
            "free disk space"))
    for path, expires in sorted((certificates or {}).items()):
        days = (expires.timestamp() - now) / 86400
        if days <= alerts.certificate_expiry_days:
            state = "expired" if days < 0 else f"expires in {days:.0f} days"
            out.append(Condition(
                "certificate_expiring", path, f"the certificate {path} {state} "
                f"({expires.isoformat(timespec='seconds')})",
                f"renew {path}, then `systemctl reload xoauth2-relay` (or send SIGHUP)"))
    if spool is not None:
        out += spool_conditions(spool, alerts)
    return out


def spool_conditions(spool: SpoolStats, alerts: AlertsConfig) -> list[Condition]:
    """A backlog (the oldest spooled message waits too long, or too many wait) and corrupt files."""
    out: list[Condition] = []
    if spool.messages and (spool.oldest_age_s >= alerts.spool_oldest_age_s
                           or spool.messages >= alerts.spool_messages):
        accounts = ", ".join(f"{name}: {n}" for name, n in sorted(spool.per_account.items()) if n)
        out.append(Condition(
            "spool_backlog", "spool", f"{spool.messages} message(s) wait in the spool ({accounts}); the "
            f"oldest for {spool.oldest_age_s / 3600:.1f} h",
            "`relay queue list` shows each message's last error (upstream down, the account throttled, "
            "its token dead: `relay check ACCOUNT`); after the fix, `relay queue retry --all`"))
    if spool.corrupt_files:
        out.append(Condition(
            "spool_corrupt", "spool", f"{spool.corrupt_files} spool file(s) could not be read and were "
            "moved to the spool's corrupt/ directory (not delivered)",
            "see the relay log for each file's problem (another token store key? disk errors?); "
            "restore or delete the files in corrupt/"))
    return out


@dataclass
class _Active:
    condition: Condition
    since: float
    last_sent: float


@dataclass
class AlertTracker:
    """Fires once per state change, repeats while the state lasts, sends a recovery notice."""

    repeat_interval_s: float
    active: dict[str, _Active] = field(default_factory=dict)

    def step(self, conditions: Iterable[Condition], now: float) -> list[Alert]:
        """The alerts to send for the conditions that hold at ``now``."""
        alerts: list[Alert] = []
        current = {c.key: c for c in conditions}
        for key, gone in list(self.active.items()):
            if key not in current:
                del self.active[key]
                alerts.append(Alert("resolved", gone.condition, gone.since, now))
        for key, condition in current.items():
            entry = self.active.get(key)
            if entry is None:
                self.active[key] = _Active(condition, now, now)
                alerts.append(Alert("firing", condition, now, now))
            else:
                entry.condition = condition
                if now - entry.last_sent >= self.repeat_interval_s:
                    entry.last_sent = now
                    alerts.append(Alert("repeat", condition, entry.since, now))
        return alerts

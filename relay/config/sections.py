"""The operations sections of the configuration model: upstream pool, admin listener, alerts, spool.

Part of `relay.config.model` (which re-exports every name here); same rules: plain frozen data,
YAML keys declared with ``key(parser, default)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from relay.config.parsers import (
    MAILBOX,
    boolean,
    choice,
    file_path,
    optional_section,
    optional_text,
    port,
    seconds,
    secret_text,
    text,
    text_list,
    url,
    whole,
)
from relay.config.schema import key
from relay.secret import Secret

DAY_S = 86_400.0


@dataclass(frozen=True)
class PoolConfig:
    """Opt-in reuse of authenticated upstream SMTP sessions per account."""

    enabled: bool = key(boolean(), False)
    max_sessions_per_account: int = key(whole(0, 1000), 4)
    idle_timeout_s: float = key(seconds(DAY_S), 60.0)


@dataclass(frozen=True)
class AdminConfig:
    """The admin HTTP listener (/metrics, /healthz, /readyz, /status); off unless configured."""

    host: str = key(text(empty="127.0.0.1"), "127.0.0.1")
    port: int = key(port(allow_zero=True), 9025)
    auth_token: Secret | None = key(secret_text(), None)  # set: requests need `Authorization: Bearer`


WebhookFormat = Literal["plain", "slack", "teams"]
"""`plain`: the alert as JSON fields; `slack` / `teams`: a JSON object with a `text` field."""


@dataclass(frozen=True)
class WebhookAlertConfig:
    """Alerts as a JSON POST to ``url``."""

    url: str = key(url(), required=True)
    format: WebhookFormat = key(choice(WebhookFormat), "plain")
    timeout_s: float = key(seconds(300.0), 10.0)


@dataclass(frozen=True)
class EmailAlertConfig:
    """Alerts as an email sent upstream through one of the relay's own accounts."""

    account: str = key(text(), required=True)
    to: tuple[str, ...] = key(text_list("an address or a list of addresses", pattern=MAILBOX,
                                        item="an email address", single=True), required=True, placeholder=())
    sender: str | None = key(optional_text(pattern=MAILBOX, what="an email address"), None, name="from")


@dataclass(frozen=True)
class AlertsConfig:
    """When and where the relay tells its operator that something needs doing."""

    webhook: WebhookAlertConfig | None = key(optional_section(WebhookAlertConfig), None)
    email: EmailAlertConfig | None = key(optional_section(EmailAlertConfig), None)
    check_interval_s: float = key(seconds(DAY_S), 30.0)
    repeat_interval_s: float = key(seconds(30 * DAY_S), 4 * 3600.0)  # say it again this often
    refresh_failing_after_s: float = key(seconds(30 * DAY_S), 3600.0)  # refresh failing this long
    token_rejections: int = key(whole(0, 1000), 3)  # the upstream refused this many fresh tokens
    certificate_expiry_days: int = key(whole(0, 3650), 14)  # a certificate expires within this
    spool_oldest_age_s: float = key(seconds(365 * DAY_S), 3600.0)  # a spooled message waits this long
    spool_messages: int = key(whole(1, 100_000_000), 1000)  # this many messages wait in the spool


@dataclass(frozen=True)
class SpoolConfig:
    """The durable spool for accounts with ``delivery: spool`` (one directory per replica).

    Defaults fit Exchange Online's per-mailbox limits (30 messages a minute, 3 concurrent
    submissions: one left for other senders) and Postfix's queue lifetime (5 days)."""

    directory: Path | None = key(file_path(), None)  # None: "spool" beside the token store
    max_bytes: int = key(whole(1, 2**50), 1024 * 1024 * 1024)
    max_messages: int = key(whole(1, 100_000_000), 10_000)
    max_concurrency: int = key(whole(1, 100), 2)  # per account
    max_messages_per_minute: int = key(whole(1, 10**9), 30)  # per account
    max_age_s: float = key(seconds(365 * DAY_S), 5 * DAY_S)
    retry_initial_s: float = key(seconds(DAY_S), 60.0)
    retry_max_s: float = key(seconds(30 * DAY_S), 3600.0)
    bounce_to: str | None = key(optional_text(pattern=MAILBOX, what="an email address"), None)

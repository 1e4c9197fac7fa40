"""Phase 2 checks of the operations sections, ``admin:`` and ``alerts:`` (see relay.example.yaml)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from relay.config.model import AccountConfig, AdminConfig, AlertsConfig
from relay.localauth import is_loopback

MIN_TOKEN_CHARS = 16
Report = Callable[[str, str], None]


def check_admin(admin: AdminConfig | None, problem: Report) -> None:
    """A usable admin token; a token whenever the listener is not on loopback."""
    if admin is None:
        return
    token = admin.auth_token.reveal() if admin.auth_token is not None else None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        problem("admin.auth_token", f"is too short ({len(token)} characters); use at least "
                f"{MIN_TOKEN_CHARS}, e.g. from `openssl rand -hex 24`")
    if token is not None and any(ch.isspace() or not ch.isprintable() for ch in token):
        problem("admin.auth_token", "must not contain spaces or control characters")
    if not is_loopback(admin.host) and not token:
        problem("admin.auth_token", f"is required when admin.host ({admin.host}) is not loopback: the "
                "status and metrics would be open to the network")


def check_alerts(alerts: AlertsConfig | None, accounts: Mapping[str, AccountConfig],
                 problem: Report) -> None:
    """A destination, and an email account that exists and can send."""
    if alerts is None:
        return
    if alerts.webhook is None and alerts.email is None:
        problem("alerts", "needs a webhook (alerts.webhook.url) or an email (alerts.email.account and "
                "alerts.email.to), or remove the section")
    email = alerts.email
    if email is None or not email.account:
        return
    if email.account not in accounts:
        problem("alerts.email.account", f"no account named '{email.account}' (known: "
                f"{', '.join(accounts) or 'none'})")
    elif accounts[email.account].smtp is None:
        problem("alerts.email.account", f"account '{email.account}' has no smtp upstream to send with")

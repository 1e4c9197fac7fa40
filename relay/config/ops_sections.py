"""The operations sections of the configuration: ``admin:`` and ``alerts:`` (see relay.example.yaml).

Built with the loader's problem-collecting builder, so their errors name the YAML path like every
other setting's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from relay.config.model import (
    AccountConfig,
    AdminConfig,
    AlertsConfig,
    EmailAlertConfig,
    WebhookAlertConfig,
)
from relay.secret import Secret

WEBHOOK_FORMATS = ("plain", "slack", "teams")
_ADDRESS = re.compile(r"[^@\s\x00-\x1f\x7f<>]+@[^@\s\x00-\x1f\x7f<>]+\.[^@\s\x00-\x1f\x7f<>]+")
MIN_TOKEN_CHARS = 16
_MISSING = object()


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def build_admin(b: Any, value: object) -> AdminConfig | None:
    """``admin:`` -> AdminConfig (None when absent or false: no admin listener)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    data = b.mapping(value, "admin", _names(AdminConfig))
    if data is None:
        return None
    token = b.string(data.get("auth_token"), "admin.auth_token", secret=True)
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        b.problem("admin.auth_token", f"is too short ({len(token)} characters); use at least "
                  f"{MIN_TOKEN_CHARS}, e.g. from `openssl rand -hex 24`")
    if token is not None and any(ch.isspace() or not ch.isprintable() for ch in token):
        b.problem("admin.auth_token", "must not contain spaces or control characters")
    host = b.string(data.get("host"), "admin.host") or AdminConfig.host
    from relay.localauth import is_loopback  # noqa: PLC0415 - the loader imports it already

    if not is_loopback(host) and not token:
        b.problem("admin.auth_token", f"is required when admin.host ({host}) is not loopback: the "
                  "status and metrics would be open to the network")
    return AdminConfig(host=host, port=b.port(data.get("port"), "admin.port", AdminConfig.port,
                                              allow_zero=True),
                       auth_token=Secret(token) if token else None)


def build_alerts(b: Any, value: object, accounts: Mapping[str, AccountConfig]) -> AlertsConfig | None:
    """``alerts:`` -> AlertsConfig (None when absent)."""
    if value is None or value is False:
        return None
    data = b.mapping(value, "alerts", _names(AlertsConfig))
    if data is None:
        return None
    numbers: dict[str, Any] = {}
    for f in dataclasses.fields(AlertsConfig):
        if f.name in ("webhook", "email") or f.name not in data:
            continue
        integer = isinstance(f.default, int)
        numbers[f.name] = b.number(data[f.name], f"alerts.{f.name}", f.default, integer=integer)
    webhook = _webhook(b, data.get("webhook"))
    email = _email(b, data.get("email"), accounts)
    if data.get("webhook") is None and data.get("email") is None:
        b.problem("alerts", "needs a webhook (alerts.webhook.url) or an email (alerts.email.account and "
                  "alerts.email.to), or remove the section")
    return AlertsConfig(webhook=webhook, email=email, **numbers)


def _webhook(b: Any, value: object) -> WebhookAlertConfig | None:
    if value is None:
        return None
    data = b.mapping(value, "alerts.webhook", _names(WebhookAlertConfig), required=("url",))
    if data is None:
        return None
    url = b.url(data.get("url"), "alerts.webhook.url")
    fmt = b.choice(data.get("format"), "alerts.webhook.format", WEBHOOK_FORMATS, "plain")
    timeout_s = b.number(data.get("timeout_s"), "alerts.webhook.timeout_s", WebhookAlertConfig.timeout_s,
                         integer=False)
    if url is None:
        return None
    return WebhookAlertConfig(url=url, format=fmt, timeout_s=timeout_s)


def _email(b: Any, value: object, accounts: Mapping[str, AccountConfig]) -> EmailAlertConfig | None:
    if value is None:
        return None
    known = ("account", "to", "from")
    data = b.mapping(value, "alerts.email", known, required=("account", "to"))
    if data is None:
        return None
    account = b.string(data.get("account"), "alerts.email.account") or ""
    if account and account not in accounts:
        b.problem("alerts.email.account", f"no account named '{account}' (known: "
                  f"{', '.join(accounts) or 'none'})")
    elif account and accounts[account].smtp is None:
        b.problem("alerts.email.account", f"account '{account}' has no smtp upstream to send with")
    raw_to = data.get("to")
    items = raw_to if isinstance(raw_to, list) else [raw_to] if raw_to is not None else []
    to: list[str] = []
    for index, item in enumerate(items):
        path = f"alerts.email.to[{index}]" if isinstance(raw_to, list) else "alerts.email.to"
        address = b.string(item, path)
        if address and not _ADDRESS.fullmatch(address):
            b.problem(path, f"'{address}' is not an email address")
        elif address:
            to.append(address)
    sender = b.string(data.get("from"), "alerts.email.from")
    if sender and not _ADDRESS.fullmatch(sender):
        b.problem("alerts.email.from", f"'{sender}' is not an email address")
    if not account or not to:
        return None
    return EmailAlertConfig(account=account, to=tuple(to), sender=sender or None)

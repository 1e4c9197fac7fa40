"""Where alerts go: a webhook (JSON POST) and an email sent upstream through one of the relay's accounts.

A channel that fails raises `AlertDeliveryError`; the monitor logs it and carries on.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Protocol

from relay.alerts.rules import Alert
from relay.config.model import EmailAlertConfig, RelayConfig, WebhookAlertConfig
from relay.sendmail import AlertDeliveryError, send_upstream_message

if TYPE_CHECKING:
    from relay.tokens.source import TokenSource

USER_AGENT = "xoauth2-relay-alerts"


class AlertChannel(Protocol):
    """Sends one alert."""

    name: str

    async def send(self, alert: Alert) -> None:
        """Deliver ``alert`` or raise AlertDeliveryError."""
        ...


def webhook_payload(alert: Alert, fmt: str, relay_name: str) -> dict[str, object]:
    """The JSON body: the alert's fields (``plain``), or a ``text`` for Slack / Teams webhooks."""
    if fmt in ("slack", "teams"):
        return {"text": alert.text(relay_name)}
    return alert.fields(relay_name)


class WebhookChannel:
    """POSTs each alert as JSON to ``alerts.webhook.url``."""

    name = "webhook"

    def __init__(self, config: WebhookAlertConfig, relay_name: str | None = None) -> None:
        self.config = config
        self.relay_name = relay_name or socket.gethostname()

    async def send(self, alert: Alert) -> None:
        """POST the alert; any non-2xx status or transport error is an AlertDeliveryError."""
        import httpx  # noqa: PLC0415 - only when an alert is actually sent

        body = json.dumps(webhook_payload(alert, self.config.format, self.relay_name)).encode()
        try:
            async with httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False) as http:
                response = await http.post(self.config.url, content=body, headers={
                    "Content-Type": "application/json", "User-Agent": USER_AGENT})
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"webhook {_safe_url(self.config.url)}: {type(exc).__name__}: "
                                     f"{exc}") from None
        if not 200 <= response.status_code < 300:
            raise AlertDeliveryError(f"webhook {_safe_url(self.config.url)} answered HTTP "
                                     f"{response.status_code}")


def _safe_url(url: str) -> str:
    """The URL without its path and query (webhook URLs often carry their secret in the path)."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/..."


def alert_message(alert: Alert, sender: str, to: tuple[str, ...], relay_name: str) -> EmailMessage:
    """The alert as a plain-text email."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"[xoauth2-relay] {alert.summary()}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(alert.text(relay_name) + "\n")
    return msg


class EmailChannel:
    """Sends each alert upstream through the account ``alerts.email.account`` (its own token)."""

    name = "email"

    def __init__(self, config: EmailAlertConfig, relay_config: RelayConfig, tokens: TokenSource,
                 relay_name: str | None = None) -> None:
        self.config = config
        self.relay_config = relay_config
        self.tokens = tokens
        self.relay_name = relay_name or socket.gethostname()

    async def send(self, alert: Alert) -> None:
        """Log in upstream with XOAUTH2 and send; a refusal or failure is an AlertDeliveryError."""
        account = self.relay_config.accounts[self.config.account]
        sender = self.config.sender or account.mailbox
        msg = alert_message(alert, sender, self.config.to, self.relay_name)
        await send_upstream_message(self.relay_config, self.tokens, account, self.config.to, msg=msg)

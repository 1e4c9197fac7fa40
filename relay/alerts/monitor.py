"""AlertMonitor: every ``alerts.check_interval_s`` evaluate the rules and send what the tracker says.

Each alert goes to every configured channel; a failing channel is logged (with the alert, so the
log still tells the operator) and never stops the monitor or the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from pathlib import Path

from relay.admin.report import RelayView, collect
from relay.alerts.channels import AlertChannel, EmailChannel, WebhookChannel
from relay.alerts.rules import Alert, AlertTracker, evaluate
from relay.config.model import AlertsConfig, RelayConfig
from relay.errors import RelayError
from relay.metrics import SpoolStats
from relay.sendmail import AlertDeliveryError

log = logging.getLogger("relay.alerts")


def certificate_expiries(config: RelayConfig) -> dict[str, datetime]:
    """The expiry of each configured listener certificate that can be read."""
    from cryptography import x509  # noqa: PLC0415 - only with alerts

    out: dict[str, datetime] = {}
    for listener in (config.listen.smtp, config.listen.pop3):
        path = listener.cert_file
        if not listener.enabled or listener.tls == "none" or path is None or str(path) in out:
            continue
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("alerts: cannot read the certificate %s: %s", path, exc)
            continue
        out[str(path)] = cert.not_valid_after_utc
    return out


class AlertMonitor:
    """Runs the checks on the relay's event loop."""

    def __init__(self, view: RelayView, *, clock: object = time.time) -> None:
        self.view = view
        alerts = view.config.alerts
        assert alerts is not None
        self.alerts: AlertsConfig = alerts
        self.tracker = AlertTracker(alerts.repeat_interval_s)
        self._clock = clock if callable(clock) else time.time
        self._task: asyncio.Task[None] | None = None
        self.sent: list[tuple[str, Alert]] = []  # (channel, alert), for status and tests

    def channels(self) -> list[AlertChannel]:
        """The configured channels (built per send: the token manager changes on reload)."""
        out: list[AlertChannel] = []
        if self.alerts.webhook is not None:
            out.append(WebhookChannel(self.alerts.webhook))
        if self.alerts.email is not None:
            out.append(EmailChannel(self.alerts.email, self.view.config, self.view.tokens))
        return out

    def start(self) -> None:
        """Start checking."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="alert-monitor")

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except (RelayError, OSError) as exc:
                log.error("alerts: the check failed: %s", exc)
            await asyncio.sleep(self.alerts.check_interval_s)

    async def check(self) -> list[Alert]:
        """One pass: evaluate, then send the alerts due. Returns them."""
        report = await collect(self.view)
        tokens = self.view.tokens
        now = float(self._clock())
        conditions = evaluate(report, self.alerts, now, unsaved=tokens.unsaved_accounts,
                              store_path=str(report.config.token_store.path),
                              certificates=certificate_expiries(report.config),
                              spool=_spool_stats(self.view))
        due = self.tracker.step(conditions, now)
        for alert in due:
            await self._send(alert)
        return due

    async def _send(self, alert: Alert) -> None:
        c = alert.condition
        level = logging.INFO if alert.event == "resolved" else logging.WARNING
        log.log(level, "%s; cause: %s; fix: %s", alert.summary(), c.cause, c.fix,
                extra={"account": c.account, "alert": c.kind, "outcome": alert.event})
        for channel in self.channels():
            try:
                await channel.send(alert)
            except AlertDeliveryError as exc:
                log.error("alerts: the %s channel failed (%s); the alert was: %s", channel.name, exc,
                          alert.summary())
            except Exception as exc:  # a channel bug must never take the relay down
                log.error("alerts: the %s channel failed unexpectedly: %s", channel.name, exc, exc_info=exc)
            else:
                self.sent.append((channel.name, alert))


def _spool_stats(view: object) -> SpoolStats | None:
    """The running spool's state (None without ``delivery: spool`` accounts)."""
    spool = getattr(view, "spool", None)
    return spool.stats() if spool is not None else None

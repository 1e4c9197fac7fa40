"""The spool's metrics families and alert conditions (spool depth and oldest age)."""

from __future__ import annotations

from relay.alerts.rules import spool_conditions
from relay.config.model import AlertsConfig, WebhookAlertConfig
from relay.metrics import RelayMetrics, SpoolStats

ALERTS = AlertsConfig(webhook=WebhookAlertConfig(url="http://127.0.0.1:9/hook"), spool_oldest_age_s=3600,
                      spool_messages=100)


def _stats(messages: int = 3, oldest_age_s: float = 10.0, corrupt: int = 0) -> SpoolStats:
    return SpoolStats(messages=messages, bytes=4096, oldest_age_s=oldest_age_s, corrupt_files=corrupt,
                      per_account={"sales": messages}, delivered=7, bounced=1)


def test_metrics_render_spool_depth_age_and_counters() -> None:
    """With a spool, /metrics has its depth per account, bytes, oldest age, corrupt files, counters."""
    metrics = RelayMetrics(["sales"])
    assert b"spool" not in metrics.render()
    metrics.spool = lambda: _stats(oldest_age_s=125.5, corrupt=2)
    text = metrics.render().decode()
    for line in ('xoauth2relay_spool_messages{account="sales"} 3.0', "xoauth2relay_spool_bytes 4096.0",
                 "xoauth2relay_spool_oldest_message_age_seconds 125.5",
                 "xoauth2relay_spool_corrupt_files 2.0", "xoauth2relay_spool_delivered_total 7.0",
                 "xoauth2relay_spool_bounced_total 1.0"):
        assert line in text


def test_no_alert_for_a_young_small_spool() -> None:
    """A few messages younger than the threshold: nothing to say."""
    assert spool_conditions(_stats(), ALERTS) == []
    assert spool_conditions(_stats(messages=0, oldest_age_s=0), ALERTS) == []


def test_backlog_alert_by_age_or_depth_names_the_accounts_and_the_fix() -> None:
    """The oldest message over spool_oldest_age_s, or spool_messages waiting, fires spool_backlog."""
    for stats in (_stats(oldest_age_s=7200), _stats(messages=150)):
        (condition,) = spool_conditions(stats, ALERTS)
        assert condition.kind == "spool_backlog" and "sales: " in condition.cause
        assert "relay queue list" in condition.fix


def test_corrupt_files_alert() -> None:
    """Files moved to corrupt/ fire spool_corrupt."""
    (condition,) = spool_conditions(_stats(corrupt=1), ALERTS)
    assert condition.kind == "spool_corrupt" and "corrupt/" in condition.cause

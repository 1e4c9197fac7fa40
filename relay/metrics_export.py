"""The Prometheus exposition of `RelayMetrics`: a prometheus_client collector over its plain counters.

Built on every scrape (O(series), bounded by the configuration); the mail paths never touch it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import relay

if TYPE_CHECKING:
    from relay.metrics import LatencyHistogram, RelayMetrics, SpoolStats

PREFIX = "xoauth2relay"


def _counter(name: str, doc: str, labels: list[str], values: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    for key, value in sorted(values.items(), key=lambda kv: str(kv[0])):
        family.add_metric(list(key) if isinstance(key, tuple) else [str(key)], value)
    return family


def _gauge(name: str, doc: str, labels: list[str], values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _buckets(hist: LatencyHistogram) -> list[tuple[str, float]]:
    from relay.metrics import LATENCY_BUCKETS  # noqa: PLC0415 - circular at import time

    cumulative = 0
    out: list[tuple[str, float]] = []
    for bound, count in zip([*LATENCY_BUCKETS, float("inf")], hist.counts, strict=True):
        cumulative += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return out


class RelayCollector(Collector):
    """Yields every relay metric family from a `RelayMetrics`."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        """The families, in a stable order."""
        m = self.m
        yield _counter("sessions", "Client sessions ended, by protocol and outcome",
                       ["protocol", "outcome"], m.sessions)
        yield _gauge("active_sessions", "Client sessions open now", ["protocol"],
                     {k: float(v) for k, v in m.active.items()})
        yield _counter("messages", "Messages by account and outcome (delivered, deferred 4xx, refused 5xx)",
                       ["account", "outcome"], m.messages)
        yield _counter("message_bytes", "Message bytes by account and outcome", ["account", "outcome"],
                       m.message_bytes)
        yield _counter("messages_fetched", "Messages retrieved over POP3, by account", ["account"], m.fetched)
        yield _counter("upstream_replies", "Upstream replies by account, protocol and class "
                       "(2xx..5xx; error: no reply)", ["account", "protocol", "class"], m.replies)
        login = HistogramMetricFamily(f"{PREFIX}_upstream_login_seconds", "Upstream connect + XOAUTH2 "
                                      "login time", labels=["protocol"])
        for protocol, hist in sorted(m.login_seconds.items()):
            login.add_metric([protocol], _buckets(hist), hist.total)
        yield login
        message = HistogramMetricFamily(f"{PREFIX}_message_seconds", "Time from the message content's "
                                        "start to the upstream's final reply")
        message.add_metric([], _buckets(m.message_seconds), m.message_seconds.total)
        yield message
        yield _counter("local_auth_failures", "Refused local logins, by protocol", ["protocol"],
                       m.auth_failures)
        yield _counter("token_refreshes", "Token requests by account and outcome", ["account", "outcome"],
                       m.refreshes)
        yield _gauge("access_token_expiry_timestamp_seconds", "When the account's current access token "
                     "expires (Unix time; 0: none)", ["account"], m.token_expiry)
        yield _gauge("needs_reauthorization", "1 when the account needs `relay authorize ACCOUNT`",
                     ["account"], m.needs_reauth)
        yield _gauge("pool_sessions", "Pooled upstream SMTP sessions by state", ["state"], m.pool_sessions)
        if m.spool is not None:
            yield from _spool_families(m.spool())
        info = InfoMetricFamily(f"{PREFIX}_build", "The relay's version")
        info.add_metric([], {"version": relay.__version__})
        yield info


def _spool_families(spool: SpoolStats) -> Iterator[Metric]:
    """Spool depth (per account), bytes, oldest age, corrupt files, delivered and bounced."""
    yield _gauge("spool_messages", "Messages waiting in the spool, by account", ["account"],
                 {name: float(n) for name, n in spool.per_account.items()})
    for name, doc, value in (
            ("spool_bytes", "Bytes of the spool's queued files", spool.bytes),
            ("spool_oldest_message_age_seconds", "Age of the oldest message in the spool (0: empty)",
             spool.oldest_age_s),
            ("spool_corrupt_files", "Spool files moved aside as unreadable", spool.corrupt_files)):
        yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))
    yield CounterMetricFamily(f"{PREFIX}_spool_delivered", "Spooled messages delivered since start",
                              value=spool.delivered)
    yield CounterMetricFamily(f"{PREFIX}_spool_bounced", "Spooled messages given up (a DSN sent, or "
                              "logged for <>) since start", value=spool.bounced)


def build_registry(metrics: RelayMetrics) -> CollectorRegistry:
    """A registry holding only the relay's collector (not the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(metrics))
    return registry

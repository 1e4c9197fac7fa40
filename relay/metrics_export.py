"""The Prometheus exposition of `RelayMetrics`: a prometheus_client collector over its plain counters.

Built on every scrape (O(series), bounded by the configuration); the mail paths never touch it.
It reads the counters through the `MetricsSource` protocol, so `relay.metrics` imports this module
and not the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

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

PREFIX = "xoauth2relay"


class Histogram(Protocol):
    """Bucket counts (not cumulative, the last one +Inf) and the sum of the observations."""

    @property
    def counts(self) -> Sequence[int]:
        """Observations per bucket."""

    @property
    def total(self) -> float:
        """Sum of the observed values."""


class SpoolSource(Protocol):
    """The spool's numbers (`relay.metrics.SpoolStats` has them)."""

    @property
    def per_account(self) -> Mapping[str, int]:
        """account -> messages waiting."""

    @property
    def bytes(self) -> int:
        """Bytes of the queued files."""

    @property
    def oldest_age_s(self) -> float:
        """Age of the oldest message (0: empty)."""

    @property
    def corrupt_files(self) -> int:
        """Files moved aside as unreadable."""

    @property
    def delivered(self) -> int:
        """Spooled messages delivered since start."""

    @property
    def bounced(self) -> int:
        """Spooled messages given up since start."""


class MetricsSource(Protocol):
    """The plain counters the collector reads (`relay.metrics.RelayMetrics` has them)."""

    @property
    def sessions(self) -> Mapping[tuple[str, str], int]:
        """(protocol, outcome) -> ended sessions."""

    @property
    def active(self) -> Mapping[str, int]:
        """protocol -> open sessions."""

    @property
    def messages(self) -> Mapping[tuple[str, str], int]:
        """(account, outcome) -> messages."""

    @property
    def message_bytes(self) -> Mapping[tuple[str, str], int]:
        """(account, outcome) -> message bytes."""

    @property
    def fetched(self) -> Mapping[str, int]:
        """account -> messages retrieved over POP3."""

    @property
    def replies(self) -> Mapping[tuple[str, str, str], int]:
        """(account, protocol, class) -> upstream replies."""

    @property
    def login_seconds(self) -> Mapping[str, Histogram]:
        """protocol -> upstream login times."""

    @property
    def message_seconds(self) -> Histogram:
        """Message transfer times."""

    @property
    def auth_failures(self) -> Mapping[str, int]:
        """protocol -> refused local logins."""

    @property
    def refreshes(self) -> Mapping[tuple[str, str], int]:
        """(account, outcome) -> token requests."""

    @property
    def token_expiry(self) -> Mapping[str, float]:
        """account -> access token expiry (Unix time)."""

    @property
    def needs_reauth(self) -> Mapping[str, float]:
        """account -> 1.0 when it needs `relay authorize`."""

    @property
    def pool_sessions(self) -> Mapping[str, float]:
        """state -> pooled upstream SMTP sessions."""

    @property
    def spool(self) -> Callable[[], SpoolSource] | None:
        """Reads the spool's numbers (None: no account spools)."""


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


def _buckets(hist: Histogram, bounds: Sequence[float]) -> list[tuple[str, float]]:
    cumulative = 0
    out: list[tuple[str, float]] = []
    for bound, count in zip([*bounds, float("inf")], hist.counts, strict=True):
        cumulative += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return out


class RelayCollector(Collector):
    """Yields every relay metric family from a `RelayMetrics` (histograms with ``bounds``)."""

    def __init__(self, metrics: MetricsSource, bounds: Sequence[float]) -> None:
        self.m = metrics
        self.bounds = bounds

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
            login.add_metric([protocol], _buckets(hist, self.bounds), hist.total)
        yield login
        message = HistogramMetricFamily(f"{PREFIX}_message_seconds", "Time from the message content's "
                                        "start to the upstream's final reply")
        message.add_metric([], _buckets(m.message_seconds, self.bounds), m.message_seconds.total)
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


def _spool_families(spool: SpoolSource) -> Iterator[Metric]:
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


def build_registry(metrics: MetricsSource, bounds: Sequence[float]) -> CollectorRegistry:
    """A registry holding only the relay's collector (not the process-global default registry);
    ``bounds`` are the upper bounds of the latency histograms' buckets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(metrics, bounds))
    return registry

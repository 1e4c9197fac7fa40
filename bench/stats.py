"""Result records and summary statistics of one load run."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: list[float]) -> float | None:
    """Median, or None for no values."""
    return statistics.median(values) if values else None


@dataclass
class LoadResult:
    """What one load run (one target, one cell, one repeat) measured."""

    sessions: int = 0
    messages_ok: int = 0
    bytes_ok: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # per message
    setup_s: list[float] = field(default_factory=list)  # connect to logged in, per connection
    errors: Counter[str] = field(default_factory=Counter)  # "stage: reply or exception" -> count
    failed_sessions: int = 0
    hung_sessions: int = 0
    acked: list[str] = field(default_factory=list)  # SMTP: envelope digests the client got 250 for
    content_mismatches: int = 0  # POP3: RETR bytes that differ from the stored message
    loadgen_cpu_s: float = 0.0
    # Filled by verification and by the target (relay CPU, upstream counters).
    verify: dict[str, int] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def msg_per_s(self) -> float:
        """Messages acknowledged (SMTP) or retrieved intact (POP3) per second of wall time."""
        return self.messages_ok / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        """Content MiB per second of wall time."""
        return self.bytes_ok / self.wall_s / 2**20 if self.wall_s else 0.0

    def latency_ms(self, q: float) -> float | None:
        """Per-message latency quantile in ms."""
        value = percentile(self.latencies_s, q)
        return None if value is None else value * 1000

    def setup_ms(self, q: float) -> float | None:
        """Connect-to-logged-in quantile in ms."""
        value = percentile(self.setup_s, q)
        return None if value is None else value * 1000

    @property
    def delivery_ok(self) -> bool:
        """True when verification found every acknowledged message exactly once, byte-exact."""
        v = self.verify
        return (v.get("missing", 0) == 0 and v.get("duplicates", 0) == 0
                and self.content_mismatches == 0 and "checked" in v)

"""The benchmark matrix: which cells run, their sizes, and the targets they are judged against."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.loadgen import LoadSpec

KB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class Cell:
    """One row of the table: a load spec run against every target, with its pass mark."""

    key: str
    label: str
    spec: LoadSpec
    min_ratio: float | None = None  # relay/direct msg/s must be at least this
    mailbox: int = 0  # POP3/IMAP: messages in the upstream mailbox
    zero_failures: bool = False  # the cell passes only with no failed or hung session


def _smtp(key: str, label: str, c: int, m: int, size: int, ratio: float | None, **kw: object) -> Cell:
    return Cell(key, label, LoadSpec("smtp", c, m, size), ratio, **kw)  # type: ignore[arg-type]


def _pop3(key: str, label: str, c: int, n: int, size: int, ratio: float) -> Cell:
    return Cell(key, label, LoadSpec("pop3", c, n, size), ratio, mailbox=max(n, 20))


def _imap(key: str, label: str, c: int, n: int, size: int, ratio: float) -> Cell:
    return Cell(key, label, LoadSpec("imap", c, n, size), ratio, mailbox=max(n, 20))


FULL = (
    _smtp("smtp-1k-c1", "SMTP 1 KB, C=1", 1, 500, KB, 0.8),
    _smtp("smtp-1k-c20", "SMTP 1 KB, C=20", 20, 50, KB, 0.6),
    _smtp("smtp-1k-c200", "SMTP 1 KB, C=200", 200, 5, KB, 0.6),
    _smtp("smtp-100k-c1", "SMTP 100 KB, C=1", 1, 100, 100 * KB, 0.8),
    _smtp("smtp-100k-c20", "SMTP 100 KB, C=20", 20, 10, 100 * KB, 0.8),
    _smtp("smtp-5m-c1", "SMTP 5 MB, C=1", 1, 4, 5 * MB, 0.8),
    _smtp("smtp-5m-c20", "SMTP 5 MB, C=20", 20, 1, 5 * MB, 0.8),
    _pop3("pop3-10k-c1", "POP3 10 KB, C=1", 1, 500, 10 * KB, 0.7),
    _pop3("pop3-10k-c20", "POP3 10 KB, C=20", 20, 50, 10 * KB, 0.7),
    _pop3("pop3-1m-c1", "POP3 1 MB, C=1", 1, 30, MB, 0.8),
    _pop3("pop3-1m-c20", "POP3 1 MB, C=20", 20, 5, MB, 0.8),
    _imap("imap-10k-c1", "IMAP 10 KB, C=1", 1, 500, 10 * KB, 0.7),
    _imap("imap-10k-c20", "IMAP 10 KB, C=20", 20, 50, 10 * KB, 0.7),
    _imap("imap-1m-c1", "IMAP 1 MB, C=1", 1, 30, MB, 0.8),
    _imap("imap-1m-c20", "IMAP 1 MB, C=20", 20, 5, MB, 0.8),
    _smtp("smtp-1k-c1000", "SMTP 1 KB, C=1000 (1 msg each)", 1000, 1, KB, None, zero_failures=True),
)

QUICK = (
    _smtp("smtp-1k-c1", "SMTP 1 KB, C=1", 1, 5, KB, 0.8),
    _smtp("smtp-1k-c5", "SMTP 1 KB, C=5", 5, 2, KB, 0.6),
    _smtp("smtp-100k-c2", "SMTP 100 KB, C=2", 2, 1, 100 * KB, 0.8),
    _pop3("pop3-10k-c2", "POP3 10 KB, C=2", 2, 3, 10 * KB, 0.7),
    _imap("imap-10k-c2", "IMAP 10 KB, C=2", 2, 3, 10 * KB, 0.7),
    _smtp("smtp-1k-c20", "SMTP 1 KB, C=20 (1 msg each)", 20, 1, KB, None, zero_failures=True),
)


@dataclass(frozen=True)
class Specials:
    """Sizes of the relay-only (and emailproxy-only) experiments."""

    cold_burst_sessions: int = 100
    idle_sessions: int = 1000
    idle_hold_s: float = 2.0
    pool_clients: int = 4
    pool_messages: int = 5  # per client, one connection per message
    pool_latency_ms: float = 50.0
    login_cell: str = "smtp-1k-c200"  # whose setup p50 is the "login at C=200" figure
    cpu_sessions: int = 20  # emailproxy: sequential one-message sessions for its CPU per session
    emailproxy_timeout_s: float | None = None  # emailproxy runs: session timeout instead of the cells'


FULL_SPECIALS = Specials()
QUICK_SPECIALS = Specials(cold_burst_sessions=10, idle_sessions=20, idle_hold_s=0.2, pool_clients=2,
                          pool_messages=2, pool_latency_ms=5.0, login_cell="smtp-1k-c5", cpu_sessions=3,
                          emailproxy_timeout_s=10.0)  # its bursts hang sessions: keep the smoke test short


def with_tag(cell: Cell, tag: str) -> LoadSpec:
    """The cell's spec with a tag that makes its message ids unique in this run."""
    return replace(cell.spec, tag=tag)

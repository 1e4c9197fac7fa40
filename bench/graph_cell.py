"""`python -m bench graph`: SMTP 100 KB sent through the relay via Graph vs via SMTP XOAUTH2.

One relay process (`relay serve`) with two accounts against the sandbox world (run in this
process: its OAuth provider, its STARTTLS SMTP upstream and its fake Microsoft Graph):
``smtp-app`` sends upstream with SMTP XOAUTH2, ``graph-app`` with ``POST /sendMail`` (base64
MIME). The same load generator (bench/loadgen.py: raw asyncio SMTP, AUTH PLAIN to the relay)
sends the same 100 KB messages to each, alternating the order per repeat; every acknowledged
message is verified at the far side (SMTP upstream store / what Graph received), exactly once and
byte-exact. Both far sides are the sandbox's Python fakes on one thread, so the figures compare
the relay's two paths, not Microsoft's servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.child import ChildServer, free_port
from bench.content import envelope_digest
from bench.loadgen import MAIL_FROM, LoadSpec, Target, run_smtp, verify_smtp
from bench.stats import LoadResult, median
from bench.upstream_proc import REPO_ROOT
from relay.passwords import hash_password
from relay.sandbox.world import SandboxWorld
from relay.tokens.store import generate_key

KB = 1024
PASSWORD = "bench-local-password"  # noqa: S105 - loopback benchmark login
MAILBOX = MAIL_FROM  # the bench messages are From: bench@example.com
PATHS = ("smtp", "graph")


class GraphBenchRelay(ChildServer):
    """`relay serve` with one account per path."""

    label = "the relay"

    def __init__(self, world: SandboxWorld, workdir: Path) -> None:
        super().__init__(workdir / "relay.log", free_port())
        pw_hash = hash_password(PASSWORD)
        creds = world.credentials_yaml("sandbox", flow="client_credentials")
        smtp = world.account_yaml("smtp-app", pw_hash, MAILBOX)
        smtp["pop3"] = False
        graph = world.graph_account_yaml("graph-app", pw_hash, MAILBOX)
        graph["read_via"] = "pop3"
        graph["pop3"] = False
        config = {
            "listen": {"smtp": {"host": "127.0.0.1", "port": self.smtp_port, "tls": "none"},
                       "pop3": {"enabled": False}},
            "token_store": {"path": str(workdir / "tokens.enc"), "key_env": "RELAY_STORE_KEY"},
            "credentials": creds,
            "accounts": {"smtp": smtp, "graph": graph},
            "limits": {"shutdown_grace_s": 2},
        }
        self.config_path = workdir / "relay.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> float:
        """Spawn it; seconds to the first greeting."""
        env = {**os.environ, "RELAY_STORE_KEY": generate_key()}
        return self.spawn([sys.executable, "-m", "relay", "serve", "-c", str(self.config_path),
                           "--log-level", "INFO"], env=env, cwd=REPO_ROOT)


@dataclass
class PathFigures:
    """Per path: the runs of one cell."""

    runs: list[LoadResult] = field(default_factory=list)
    cpu_ms_per_msg: list[float] = field(default_factory=list)


def delivered_digests(world: SandboxWorld, path: str) -> list[str]:
    """Envelope digests of what the far side of ``path`` received."""
    if path == "smtp":
        return [envelope_digest(m.mail_from, list(m.rcpt_tos), m.data) for m in world.smtp.messages()]
    return [envelope_digest(MAIL_FROM, ["sink@example.com"], mime) for mime in world.graph.sent()]


async def measure(relay: GraphBenchRelay, world: SandboxWorld, path: str,
                  spec: LoadSpec) -> tuple[LoadResult, float]:
    """One load run on one path: the result (verified) and relay CPU ms per message."""
    target = Target(path, "relay", "127.0.0.1", relay.smtp_port, 0, f"{path}-app", PASSWORD)
    already = len(delivered_digests(world, path))
    before = relay.cpu_s()
    result = await run_smtp(target, spec)
    cpu = relay.cpu_s() - before
    result.verify = verify_smtp(result, delivered_digests(world, path)[already:])
    return result, cpu * 1000 / max(1, result.messages_ok)


async def bench_graph(cells: list[tuple[str, LoadSpec]], repeats: int,
                      log: Callable[..., None]) -> dict[str, dict[str, PathFigures]]:
    """Run every cell ``repeats`` times on both paths; figures per cell and path."""
    figures = {label: {p: PathFigures() for p in PATHS} for label, _ in cells}
    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp, \
            SandboxWorld.start(Path(tmp) / "world") as world:
        relay = GraphBenchRelay(world, Path(tmp))
        relay.start()
        try:
            warm = LoadSpec("smtp", 1, 2, 1024, tag="warm")
            for path in PATHS:  # first token of each resource, TLS to the upstream
                await measure(relay, world, path, warm)
            for repeat in range(repeats):
                for index, (label, spec) in enumerate(cells):
                    order = PATHS if repeat % 2 == 0 else PATHS[::-1]
                    for path in order:
                        tagged = LoadSpec(spec.protocol, spec.sessions, spec.messages, spec.size,
                                          tag=f"c{index}-r{repeat}-{path}")
                        result, cpu = await measure(relay, world, path, tagged)
                        figures[label][path].runs.append(result)
                        figures[label][path].cpu_ms_per_msg.append(cpu)
                        log(f"graph bench: {label} via {path} repeat {repeat + 1}: "
                            f"{result.msg_per_s:.1f} msg/s, verify {result.verify}")
        finally:
            relay.stop()
    return figures


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(figures: dict[str, dict[str, PathFigures]], repeats: int) -> str:
    """A Markdown table: per cell, msg/s, latency and relay CPU for both paths."""
    lines = [f"Graph vs SMTP XOAUTH2 through the relay, {repeats} repeat(s), medians; far sides: the "
             "sandbox's SMTP upstream and fake Graph (Python, one thread).", "",
             "| cell | path | msg/s | graph/smtp | latency p50 / p95 ms | relay CPU ms/msg | failed/hung "
             "| delivery |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for label, paths in figures.items():
        smtp_rate = median([r.msg_per_s for r in paths["smtp"].runs])
        for path in PATHS:
            runs = paths[path].runs
            rate = median([r.msg_per_s for r in runs])
            ratio = "-" if path == "smtp" or not smtp_rate or rate is None else f"{rate / smtp_rate:.2f}x"
            p50 = median([r.latency_ms(0.5) or 0 for r in runs])
            p95 = median([r.latency_ms(0.95) or 0 for r in runs])
            failed = sum(r.failed_sessions for r in runs)
            hung = sum(r.hung_sessions for r in runs)
            ok = all(r.delivery_ok for r in runs)
            checked = sum(r.verify.get("checked", 0) for r in runs)
            lines.append(f"| {label} | {path} | {_fmt(rate)} | {ratio} | {_fmt(p50, 2)} / "
                         f"{_fmt(p95, 2)} | "
                         f"{_fmt(median(paths[path].cpu_ms_per_msg), 2)} | {failed}/{hung} | "
                         f"{'ok' if ok else 'FAILED'} ({checked:,}) |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `graph` subcommand's options."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--messages", type=int, default=100, help="messages per cell (default 100)")
    parser.add_argument("--quick", action="store_true", help="10 messages, 1 repeat")


def run(args: argparse.Namespace) -> str:
    """Run the Graph cells; return the table."""
    messages = 10 if args.quick else max(4, args.messages)
    repeats = 1 if args.quick else max(1, args.repeats)
    cells = [("SMTP 100 KB, C=1", LoadSpec("smtp", 1, messages, 100 * KB)),
             ("SMTP 100 KB, C=4", LoadSpec("smtp", 4, messages // 4, 100 * KB))]

    def log(*parts: object) -> None:
        print(*parts, file=sys.stderr, flush=True)

    return render(asyncio.run(bench_graph(cells, repeats, log)), repeats)

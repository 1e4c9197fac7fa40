"""Spool mode beside forward mode, in one run: `python -m bench.spool [--messages N] [--size B]`.

1. **accept**: `relay serve` with a ``delivery: spool`` account whose upstream is unreachable (a
   closed port), so the worker only backs off; C clients send N messages of S bytes. Every 250 is
   a message fsynced into the spool (file fsync + one directory fsync per group commit).
2. **drain**: the relay is restarted on the same spool with the real (bench) upstream; the time
   from its start to the upstream holding all N messages gives the drain rate; the upstream's
   envelope digests are checked against the acknowledged ones (missing / duplicates).
3. **forward**: the same load to a ``delivery: forward`` account on that relay (live relaying).

The upstream is the bench upstream (bench/upstream.py, its own process); the load generator is
bench/loadgen.py in this process; the relay is a child process (uvloop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.child import ChildServer, free_port
from bench.loadgen import LoadSpec, Target, run_smtp, verify_smtp
from bench.stats import LoadResult
from bench.upstream_proc import REPO_ROOT, UpstreamProcess
from bench.upstream_state import CLIENT_ID, CLIENT_SECRET
from relay.passwords import hash_password
from relay.tokens.store import generate_key

PASSWORD = "bench-local-password"  # noqa: S105 - loopback benchmark login


class SpoolRelay(ChildServer):
    """`relay serve` with account 'bench' (forward) and 'spool' (delivery: spool)."""

    label = "the relay"

    def __init__(self, workdir: Path, upstream: UpstreamProcess, key: str, password_hash: str) -> None:
        super().__init__(workdir / "relay.log", free_port())
        self.workdir, self.upstream, self.key, self.password_hash = workdir, upstream, key, password_hash
        self.config_path = workdir / "relay.yaml"

    def configure(self, spool_smtp_port: int, *, concurrency: int) -> None:
        """Write the YAML; the spool account sends to ``spool_smtp_port``."""
        endpoint = {"host": "127.0.0.1", "ca_file": str(self.upstream.cert), "tls": "starttls"}
        account = {"password_hash": self.password_hash, "credentials": "bench", "pop3": False,
                   "mailbox": "bench@example.com"}
        config = {
            "listen": {"smtp": {"host": "127.0.0.1", "port": self.smtp_port}, "pop3": False},
            "token_store": {"path": str(self.workdir / "tokens.enc"), "key_env": "RELAY_STORE_KEY"},
            "credentials": {"bench": {"provider": "generic", "client_id": CLIENT_ID,
                                      "client_secret": CLIENT_SECRET, "flow": "client_credentials",
                                      "token_url": self.upstream.token_url, "scopes": ["mail"]}},
            "accounts": {
                "bench": {**account, "username": "bench-app",
                          "smtp": {**endpoint, "port": self.upstream.ports["smtp"]}},
                "spool": {**account, "username": "spool-app", "delivery": "spool",
                          "smtp": {**endpoint, "port": spool_smtp_port}},
            },
            "spool": {"directory": str(self.workdir / "spool"), "retry_initial_s": 600,
                      "max_messages_per_minute": 1_000_000, "max_concurrency": concurrency},
            "limits": {"shutdown_grace_s": 5},
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> float:
        """Spawn `relay serve`; seconds to its first greeting."""
        env = {**os.environ, "RELAY_STORE_KEY": self.key}
        return self.spawn([sys.executable, "-m", "relay", "serve", "-c", str(self.config_path),
                           "--log-level", "WARNING"], env=env, cwd=REPO_ROOT)


def _target(relay: SpoolRelay, user: str) -> Target:
    return Target(user, "relay", "127.0.0.1", relay.smtp_port, 0, user, PASSWORD)


def _line(name: str, result: LoadResult, cpu_s: float) -> str:
    p50, p99 = result.latency_ms(0.5), result.latency_ms(0.99)
    return (f"{name:<8} {result.messages_ok:>6} msgs  {result.msg_per_s:>8.0f} msg/s  "
            f"p50 {p50 or 0:6.1f} ms  p99 {p99 or 0:6.1f} ms  relay CPU {cpu_s:5.2f} s  "
            f"errors {dict(result.errors) or 0}")


def run(messages: int, size: int, sessions: int, concurrency: int) -> int:
    """The three phases; prints a small report; 1 if a check failed."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-spool-"))
    upstream = UpstreamProcess(workdir)
    upstream.start()
    relay = SpoolRelay(workdir, upstream, generate_key(), hash_password(PASSWORD))
    spec = LoadSpec("smtp", sessions, messages // sessions, size, session_timeout_s=300, tag="spool")
    failed = False
    try:
        relay.configure(free_port(), concurrency=concurrency)  # nothing listens there: upstream down
        relay.start()
        cpu0 = relay.cpu_s()
        accept = asyncio.run(run_smtp(_target(relay, "spool-app"), spec))
        print(_line("accept", accept, relay.cpu_s() - cpu0))
        relay.stop()

        upstream.reset()
        relay.configure(upstream.ports["smtp"], concurrency=concurrency)
        started = time.perf_counter()
        relay.start()
        cpu0 = relay.cpu_s()
        while len(upstream.delivered()) < accept.messages_ok and time.perf_counter() - started < 600:
            time.sleep(0.05)
        drain_s = time.perf_counter() - started
        counts = verify_smtp(accept, upstream.delivered())
        print(f"drain    {accept.messages_ok:>6} msgs  {accept.messages_ok / drain_s:>8.0f} msg/s  "
              f"({drain_s:.2f} s from relay start, max_concurrency {concurrency})  relay CPU "
              f"{relay.cpu_s() - cpu0:5.2f} s  verify {counts}")
        failed = counts["missing"] > 0 or counts["duplicates"] > 0

        upstream.reset()
        cpu0 = relay.cpu_s()
        forward = asyncio.run(run_smtp(_target(relay, "bench-app"), spec))
        counts = verify_smtp(forward, upstream.delivered())
        print(_line("forward", forward, relay.cpu_s() - cpu0) + f"  verify {counts}")
        failed = failed or counts["missing"] > 0
    finally:
        relay.stop()
        upstream.stop()
    print(f"({messages} messages of {size} bytes from {sessions} concurrent sessions; {os.cpu_count()} "
          f"CPUs; spool in {workdir})")
    return 1 if failed else 0


def main() -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=3, help="spool.max_concurrency for the drain")
    args = parser.parse_args()
    return run(args.messages, args.size, args.sessions, args.concurrency)


if __name__ == "__main__":
    raise SystemExit(main())

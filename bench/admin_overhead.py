"""What the admin listener costs the mail path: the same SMTP load through three relays: without
the admin listener, with it (metrics collected, nobody scraping), and with it scraped every second
like the Prometheus of the tests (the scrapes' own CPU is then counted too).

    python -m bench.admin_overhead [--rounds 6] [--sessions 20] [--messages 50] [--size 1024]

The relays run in turn, the order rotating each round, so drift on a shared machine hits them
alike. Reported per relay: median messages per second and median relay CPU milliseconds per
message over the rounds, and the difference (issue 15: within 3%).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.child import free_port
from bench.loadgen import LoadSpec, run_smtp, verify_smtp
from bench.relay_target import RelayProcess
from bench.run import relay_target, warm_up
from bench.upstream_proc import UpstreamProcess

ADMIN_TOKEN = "bench-admin-token-0123456789"  # noqa: S105 - loopback benchmark


class Scraper:
    """GETs /metrics every ``interval_s`` in a thread, like a Prometheus scraping."""

    def __init__(self, port: int, interval_s: float = 1.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval_s = interval_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        request = urllib.request.Request(self.url, headers={  # noqa: S310 - http://127.0.0.1
            "Authorization": f"Bearer {ADMIN_TOKEN}"})
        while not self._stop.wait(self.interval_s):
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
                response.read()
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


async def measure(rounds: int, spec: LoadSpec) -> dict[str, dict[str, list[float]]]:
    """Run the rounds; per relay name the messages/s and CPU ms per message of each round."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-admin-bench-"))
    up = UpstreamProcess(workdir)
    up.start()
    ports = {"with admin": free_port(), "with admin + scrapes": free_port()}
    relays = {"without admin": RelayProcess(up, workdir, "plain")}
    for index, (name, port) in enumerate(ports.items()):
        relays[name] = RelayProcess(up, workdir, f"admin{index}", extra={
            "admin": {"host": "127.0.0.1", "port": port, "auth_token": ADMIN_TOKEN}})
    out: dict[str, dict[str, list[float]]] = {name: {"msg_s": [], "cpu_ms": []} for name in relays}
    try:
        for relay in relays.values():
            relay.start()
            await warm_up(relay_target(relay), up)
        for index in range(rounds):
            names = list(relays)
            order = names[index % len(names):] + names[:index % len(names)]
            for name in order:
                relay = relays[name]
                up.reset()
                cpu0 = relay.cpu_s()
                if "scrapes" in name:
                    with Scraper(ports[name]):
                        result = await run_smtp(relay_target(relay), spec)
                else:
                    result = await run_smtp(relay_target(relay), spec)
                cpu_s = relay.cpu_s() - cpu0
                verify_smtp(result, up.delivered())
                messages = spec.sessions * spec.messages
                out[name]["msg_s"].append(result.msg_per_s)
                out[name]["cpu_ms"].append(cpu_s * 1000 / messages)
                print(f"round {index + 1} {name}: {out[name]['msg_s'][-1]:.0f} msg/s, "
                      f"{out[name]['cpu_ms'][-1]:.3f} CPU ms/msg", flush=True)
                await asyncio.sleep(0.2)
    finally:
        for relay in relays.values():
            relay.stop()
        up.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print the medians and the difference."""
    parser = argparse.ArgumentParser(prog="python -m bench.admin_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    spec = LoadSpec("smtp", args.sessions, args.messages, args.size, tag="admin-overhead")
    started = time.perf_counter()
    out = asyncio.run(measure(args.rounds, spec))
    base = out["without admin"]
    print(f"\n{args.rounds} rounds of {args.sessions} sessions x {args.messages} messages of "
          f"{args.size} B ({time.perf_counter() - started:.0f} s):")
    for name, figures in out.items():
        print(f"  {name:22s} median {statistics.median(figures['msg_s']):8.0f} msg/s   "
              f"{statistics.median(figures['cpu_ms']):.3f} CPU ms/msg")
    for name in ("with admin", "with admin + scrapes"):
        rate = statistics.median(out[name]["msg_s"]) / statistics.median(base["msg_s"]) - 1
        cpu = statistics.median(out[name]["cpu_ms"]) / statistics.median(base["cpu_ms"]) - 1
        print(f"  {name} vs without: throughput {rate:+.1%}, relay CPU per message {cpu:+.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Login setup with the file store vs the Redis store, measured in one run.

``python -m bench.store_compare [--sessions 200] [--repeats 3]``: one bench upstream, one
redis-server (loopback, no persistence), two `relay serve` processes that differ only in
``token_store.backend``. Each repeat runs C concurrent SMTP sessions (connect, log in, one 1 KB
message) against each relay in alternating order and reports the p50 of connect-to-235.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.child import free_port
from bench.loadgen import LoadSpec, run_smtp
from bench.relay_target import RelayProcess
from bench.run import relay_target, warm_up
from bench.stats import percentile
from bench.upstream_proc import UpstreamProcess


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def compare(sessions: int, repeats: int) -> dict[str, list[float]]:
    """p50 setup (ms) per repeat for each store."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-store-bench-"))
    up = UpstreamProcess(workdir)
    up.start()
    redis, port = start_redis(workdir)
    relays = {
        "file": RelayProcess(up, workdir, "relay-file", log_level="WARNING"),
        "redis": RelayProcess(up, workdir, "relay-redis", log_level="WARNING",
                              token_store={"backend": "redis", "url": f"redis://127.0.0.1:{port}/0"}),
    }
    results: dict[str, list[float]] = {name: [] for name in relays}
    try:
        for relay in relays.values():
            relay.start()
            await warm_up(relay_target(relay), up)
        for r in range(repeats):
            order = list(relays) if r % 2 == 0 else list(reversed(relays))
            for name in order:
                result = await run_smtp(relay_target(relays[name]),
                                        LoadSpec("smtp", sessions, 1, 1024, tag=f"{name}-{r}"))
                p50 = percentile(result.setup_s, 0.5)
                results[name].append(round((p50 or 0.0) * 1000, 2))
                up.reset()
    finally:
        for relay in relays.values():
            relay.stop()
        redis.kill()
        redis.wait()
        up.stop()
    return results


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_compare", description=__doc__)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(compare(args.sessions, args.repeats))
    for name, values in results.items():
        print(f"{name:5}  login setup p50 at C={args.sessions}, ms per repeat: {values}  "
              f"median {sorted(values)[len(values) // 2]}")


if __name__ == "__main__":
    main()

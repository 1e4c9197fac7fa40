"""`python -m bench.memory`: does the relay's memory grow over repeated bench matrices, and what holds it?

``run``: one bench upstream and one relay; the matrix's cells (relay target only) ``--rounds`` times
in a row. Fresh, after the warm-up (first token request) and after each round (sessions closed,
``--settle`` s idle) it records the relay's RSS and asks the relay for a memory report: the relay
runs under `bench.memprobe`, which on SIGUSR1 writes resident memory by mapping and by file,
pymalloc's arenas, glibc's heap statistics (mallinfo2: bytes in use vs free in the heap, mmapped
blocks); with ``--analyze`` also the cyclic garbage, gc object counts, tracemalloc's growth and
total by package (with ``--tracemalloc``), then calls ``malloc_trim(0)`` and reports RSS again:
what ``malloc_trim`` gives back was free heap the allocator kept, not memory the relay holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import child
from bench.matrix import FULL, QUICK, with_tag
from bench.memprobe import ANALYZE_ENV, REPORT_ENV, probe
from bench.relay_target import RelayProcess
from bench.run import relay_target, run_once, warm_up
from bench.upstream_proc import REPO_ROOT, UpstreamProcess
from relay.tokens.store import generate_key


class ProbedRelay(RelayProcess):
    """The relay of this tree under `bench.memprobe` (tracemalloc on when asked)."""

    def __init__(self, up: UpstreamProcess, workdir: Path, trace: int, analyze: bool) -> None:
        super().__init__(up, workdir, "relay-memory")
        self.report_path = self.workdir / "memory.jsonl"
        self.trace, self.analyze = trace, analyze

    def start(self) -> float:
        """Spawn `python -m bench.memprobe serve -c ...`."""
        env = {**os.environ, "RELAY_STORE_KEY": generate_key(), REPORT_ENV: str(self.report_path),
               ANALYZE_ENV: "1" if self.analyze else "0"}
        if self.trace:
            env["PYTHONTRACEMALLOC"] = str(self.trace)
        return self.spawn([sys.executable, "-m", "bench.memprobe", "serve", "-c",
                           str(self.config_path), "--log-level", self.log_level], env=env, cwd=REPO_ROOT)

    async def ask(self) -> dict[str, object]:
        """Signal the probe and wait for its report."""
        count = len(self.report_path.read_text().splitlines()) if self.report_path.exists() else 0
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            lines = self.report_path.read_text().splitlines() if self.report_path.exists() else []
            if len(lines) > count:
                return json.loads(lines[-1])  # type: ignore[no-any-return]
        raise RuntimeError("the relay wrote no memory report")


def summary(label: str, rep: dict[str, object]) -> str:
    """One line per report."""
    heap = rep["heap"]
    assert isinstance(heap, dict)
    traced = (f"traced {rep['traced_mib']:.1f} MiB (peak {rep['traced_peak_mib']:.1f}), "
              if "traced_mib" in rep else "")
    line = (f"{label}: RSS {rep['rss_mib']:.1f} MiB, {traced}heap {heap['heap_mib']:.1f} MiB (in use "
            f"{heap['in_use_mib']:.1f}, free {heap['free_mib']:.1f}, mmapped {heap['mmapped_mib']:.1f})")
    if "gc_objects" in rep:
        line += f", gc objects {rep['gc_objects']}, RSS after malloc_trim {rep['rss_after_trim_mib']:.1f} MiB"
    return line


def print_report(rep: dict[str, object], args: argparse.Namespace) -> None:
    """A report's lines: totals, pymalloc, resident by mapping (files by library), analysis."""
    print("  " + summary("report", rep), flush=True)
    print(f"  pymalloc: {rep['pymalloc']}", flush=True)
    if "gc_cyclic_garbage" in rep:
        print(f"  cyclic garbage: {rep['gc_cyclic_garbage']} objects: {rep['garbage_types']}")
        print(f"  resident after trim: {rep['maps_after_trim']}")
    print(f"  resident by mapping: {rep['maps']}", flush=True)
    print(f"  resident files (MiB): {rep['files']}", flush=True)
    if "traced_by_package" in rep:
        print("  traced KiB by package: " + ", ".join(
            f"{name} {kib}" for name, kib in rep["traced_by_package"]), flush=True)  # type: ignore[attr-defined]
    if args.show_top and "top" in rep:
        for site, kib, count in rep["top"]:  # type: ignore[attr-defined]
            print(f"    {kib:+8,} KiB {count:+7,} blocks  {site}")
        print("    types: " + ", ".join(f"{n} {c}" for n, c in rep["types"]))  # type: ignore[attr-defined]
        for kib, count, lines in rep.get("top_tracebacks", []):  # type: ignore[attr-defined]
            print(f"    {kib:+8,} KiB {count:+7,} blocks allocated at:\n      " + "\n      ".join(lines))


async def run(args: argparse.Namespace) -> None:
    """Rounds of the matrix against one relay, with a memory report after each."""
    cells = [c for c in (QUICK if args.quick else FULL) if args.only is None or c.key.startswith(args.only)]
    workdir = Path(tempfile.mkdtemp(prefix="relay-memory-"))
    up = UpstreamProcess(workdir)
    up.start()
    relay = ProbedRelay(up, workdir, args.tracemalloc, args.analyze)
    child.STARTUP_TIMEOUT_S = max(child.STARTUP_TIMEOUT_S, 120.0)  # tracemalloc slows imports a lot
    try:
        relay.start()
        await asyncio.sleep(1.0)
        print(f"fresh: RSS {relay.memory()['rss']:.1f} MiB", flush=True)
        print_report(await relay.ask(), args)
        target = relay_target(relay)
        await warm_up(target, up)
        await asyncio.sleep(args.settle)
        print(f"after warm-up (one message: first token request): RSS {relay.memory()['rss']:.1f} MiB",
              flush=True)
        print_report(await relay.ask(), args)
        for rnd in range(args.rounds):
            for cell in cells:
                digests = up.load_mailbox(cell.mailbox, cell.spec.size) if cell.mailbox else []
                result = await run_once(with_tag(cell, f"{cell.key}-m{rnd}"), target, up, digests, relay)
                print(f"  round {rnd + 1} {cell.key:14} {result.msg_per_s:8.1f} msg/s, RSS "
                      f"{result.extra['proxy_rss_mb']:.1f} MiB, failed {result.failed_sessions}, "
                      f"verify {result.verify}", file=sys.stderr, flush=True)
            await asyncio.sleep(args.settle)
            mem = relay.memory()
            rep = await relay.ask()
            print(f"after round {rnd + 1}: RSS {mem['rss']:.1f} MiB, HWM {mem['hwm']:.1f} MiB", flush=True)
            print_report(rep, args)
    finally:
        relay.stop()
        up.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:  # the old spelling of `python -m bench.memprobe`
        probe(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="matrix rounds against one relay with memory reports")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="the quick matrix's cells")
    p.add_argument("--only", default=None, metavar="PREFIX",
                   help="only the cells whose key starts with PREFIX")
    p.add_argument("--settle", type=float, default=12.0,
                   help="seconds idle after each round before measuring (default 12: the relay's idle "
                        "release checks every 5 s)")
    p.add_argument("--analyze", action="store_true",
                   help="reports also collect cycles (listing their types) and trim the heap")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="trace allocations with this many frames (slow: 0 = off)")
    p.add_argument("--show-top", action="store_true",
                   help="print the top allocation sites of what grew since the previous report")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

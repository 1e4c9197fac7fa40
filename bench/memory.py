"""`python -m bench.memory`: does the relay's memory grow over repeated bench matrices, and what holds it?

``run``: one bench upstream and one relay; the matrix's cells (relay target only) ``--rounds`` times
in a row. After each round (sessions closed, 1 s settle) it records the relay's RSS and asks the
relay for a memory report: the relay runs under ``probe`` (below), which on SIGUSR1 writes
tracemalloc's totals and top allocation sites (with ``--tracemalloc``), glibc's heap statistics
(mallinfo2: bytes in use vs free in the heap, mmapped blocks), gc object counts, then calls
``malloc_trim(0)`` and reports RSS again: what ``malloc_trim`` gives back was free heap the
allocator kept, not memory the relay holds.

``probe ARGS...``: run ``python -m relay ARGS...`` with that SIGUSR1 handler installed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

from bench import child
from bench.matrix import FULL, QUICK, with_tag
from bench.procstat import memory_mb
from bench.relay_target import RelayProcess
from bench.run import relay_target, run_once, warm_up
from bench.upstream_proc import REPO_ROOT, UpstreamProcess
from relay.tokens.store import generate_key

REPORT_ENV = "RELAY_MEMORY_REPORT"  # the probe writes its JSON reports here
ANALYZE_ENV = "RELAY_MEMORY_ANALYZE"
_SNAPSHOTS: list[tracemalloc.Snapshot] = []


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def heap_stats() -> dict[str, float]:
    """glibc's view (MiB): heap in use, free inside the heap, mmapped blocks."""
    libc = _libc()
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    mib = 1024 * 1024
    return {"heap_mib": info.arena / mib, "in_use_mib": info.uordblks / mib, "free_mib": info.fordblks / mib,
            "mmapped_mib": info.hblkhd / mib}


def mappings() -> dict[str, float]:
    """Resident MiB by kind of mapping (/proc/self/smaps): [heap], anonymous (by size class), files."""
    out: dict[str, float] = {}
    kind = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()
        if "-" in first[0] and not first[0].endswith(":"):
            start, end = (int(x, 16) for x in first[0].split("-"))
            size = (end - start) >> 20
            name = first[5] if len(first) > 5 else ""
            anon = f"anon {'>=1' if size else '<1'} MiB"
            kind = name if name.startswith("[") else ("file" if name else anon)
        elif first[0] == "Rss:":
            out[kind] = out.get(kind, 0.0) + int(first[1]) / 1024
    out["threads"] = len(os.listdir("/proc/self/task"))
    return {k: round(v, 1) for k, v in out.items()}


def pymalloc_stats() -> dict[str, float]:
    """pymalloc's arenas (1 MiB mmaps in 3.11) from sys._debugmallocstats, in MiB."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.rpartition("=")
        key, value = key.strip(" #"), value.strip().replace(",", "")
        if key in ("arenas allocated current", "arenas highwater mark"):
            out[key] = float(value)
        elif key in ("bytes in allocated blocks", "bytes in available blocks", "bytes in arenas"):
            out[key.replace("bytes in ", "") + " MiB"] = round(float(value) / 2**20, 1)
    return out


def report(top: int = 25) -> dict[str, object]:
    """What the probe sees of this process's memory now; with $RELAY_MEMORY_ANALYZE=1 also the cyclic
    garbage, tracemalloc's top sites, and RSS after gc.collect and malloc_trim (which changes the
    process: leave it off to see what the relay itself gives back over rounds)."""
    out: dict[str, object] = {"rss_mib": memory_mb(os.getpid())["rss"], "heap": heap_stats(),
                              "maps": mappings(), "pymalloc": pymalloc_stats()}
    if os.environ.get(ANALYZE_ENV) != "1":
        return out
    gc.set_debug(gc.DEBUG_SAVEALL)  # what only the cycle collector would free: which types
    out["gc_cyclic_garbage"] = gc.collect()
    out["garbage_types"] = Counter(type(o).__qualname__ for o in gc.garbage).most_common(12)
    gc.garbage.clear()
    gc.set_debug(0)
    gc.collect()
    out["gc_objects"] = len(gc.get_objects())
    types = Counter(type(o).__name__ for o in gc.get_objects())
    out["types"] = types.most_common(15)
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out["traced_mib"] = current / 2**20
        out["traced_peak_mib"] = peak / 2**20
        snapshot = tracemalloc.take_snapshot()
        _SNAPSHOTS.append(snapshot)  # the first one is the baseline: later reports show what grew
        stats = snapshot.compare_to(_SNAPSHOTS[0], "lineno")
        out["top"] = [(str(s.traceback), s.size_diff // 1024, s.count_diff) for s in stats[:top]]
    out["rss_after_gc_mib"] = memory_mb(os.getpid())["rss"]
    _libc().malloc_trim(0)
    out["rss_after_trim_mib"] = memory_mb(os.getpid())["rss"]
    out["heap_after_trim"] = heap_stats()
    out["maps_after_trim"] = mappings()
    return out


def probe(argv: list[str]) -> None:
    """Run the relay's CLI with a SIGUSR1 handler that appends a report to $RELAY_MEMORY_REPORT."""
    path = Path(os.environ[REPORT_ENV])

    def on_signal(signum: int, frame: FrameType | None) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps(report()) + "\n")

    signal.signal(signal.SIGUSR1, on_signal)
    sys.argv = ["relay", *argv]
    runpy.run_module("relay", run_name="__main__", alter_sys=True)


class ProbedRelay(RelayProcess):
    """The relay of this tree under ``probe`` (tracemalloc on when asked)."""

    def __init__(self, up: UpstreamProcess, workdir: Path, trace: int, analyze: bool) -> None:
        super().__init__(up, workdir, "relay-memory")
        self.report_path = self.workdir / "memory.jsonl"
        self.trace, self.analyze = trace, analyze

    def start(self) -> float:
        """Spawn `python -m bench.memory probe serve -c ...`."""
        env = {**os.environ, "RELAY_STORE_KEY": generate_key(), REPORT_ENV: str(self.report_path),
               ANALYZE_ENV: "1" if self.analyze else "0"}
        if self.trace:
            env["PYTHONTRACEMALLOC"] = str(self.trace)
        return self.spawn([sys.executable, "-m", "bench.memory", "probe", "serve", "-c",
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
        target = relay_target(relay)
        await warm_up(target, up)
        if args.analyze:
            await asyncio.sleep(args.settle)
            print("  " + summary("after warm-up", await relay.ask()), flush=True)
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
            print("  " + summary("report", rep), flush=True)
            print(f"  pymalloc: {rep['pymalloc']}", flush=True)
            if "gc_cyclic_garbage" in rep:
                print(f"  cyclic garbage: {rep['gc_cyclic_garbage']} objects: {rep['garbage_types']}")
                print(f"  resident after trim: {rep['maps_after_trim']}")
            print(f"  resident by mapping: {rep['maps']}", flush=True)
            if args.show_top and "top" in rep:
                for site, kib, count in rep["top"]:  # type: ignore[attr-defined]
                    print(f"    {kib:+8,} KiB {count:+7,} blocks  {site}")
                print("    types: " + ", ".join(f"{n} {c}" for n, c in rep["types"]))  # type: ignore[attr-defined]
    finally:
        relay.stop()
        up.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
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
    p.add_argument("--show-top", action="store_true", help="print the top allocation sites")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The relay's side of `python -m bench.memory`: ``python -m bench.memprobe ARGS...`` runs
``python -m relay ARGS...`` with a SIGUSR1 handler that appends a memory report (JSON) to
$RELAY_MEMORY_REPORT.

Only the standard library is imported here (and bench.procstat, which imports nothing else), so
the relay under the probe holds what `relay serve` holds, not the benchmark's own modules.
A report: RSS, resident MiB by kind of mapping and by mapped file (/proc/self/smaps), glibc's
mallinfo2 (heap in use vs free), pymalloc's arenas (``sys._debugmallocstats``); with
$RELAY_MEMORY_ANALYZE=1 also the cyclic garbage by type, gc object counts, tracemalloc's growth
since the first report and its total by package (when tracing), and RSS after gc + malloc_trim.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

from bench.procstat import memory_mb

REPORT_ENV = "RELAY_MEMORY_REPORT"  # the probe writes its JSON reports here
ANALYZE_ENV = "RELAY_MEMORY_ANALYZE"
REPO_NAME = Path(__file__).resolve().parents[1].name
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


def mappings(by_file: bool = False) -> dict[str, float]:
    """Resident MiB by kind of mapping (/proc/self/smaps): [heap], anonymous (by size class), files
    (``by_file``: resident MiB of each mapped file instead, the largest first)."""
    out: dict[str, float] = {}
    kind = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()
        if "-" in first[0] and not first[0].endswith(":"):
            start, end = (int(x, 16) for x in first[0].split("-"))
            size = (end - start) >> 20
            name = first[5] if len(first) > 5 else ""
            anon = f"anon {'>=1' if size else '<1'} MiB"
            kind = name if name.startswith("[") else ((name.rsplit("/", 1)[-1] if by_file else "file")
                                                     if name else anon)
        elif first[0] == "Rss:":
            out[kind] = out.get(kind, 0.0) + int(first[1]) / 1024
    if by_file:
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])
                if not k.startswith(("[", "anon")) and v >= 0.3}
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


def package_of(filename: str) -> str:
    """``relay/smtp``, ``aiosmtpd``, ``stdlib/email``, ``<frozen importlib._bootstrap_external>``
    (code objects of imported modules) ...: where a traced allocation was made."""
    for marker, prefix in (("site-packages/", ""), (f"{REPO_NAME}/relay/", "relay/"),
                           ("lib/python3.", "stdlib/")):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            if prefix == "stdlib/":
                rest = rest.split("/", 1)[1] if "/" in rest else rest
            return prefix + rest.split("/", 1)[0]
    return filename


def traced_by_package(snapshot: tracemalloc.Snapshot) -> list[tuple[str, int]]:
    """Traced KiB grouped by the package that allocated it (first frame), the largest first."""
    sizes: Counter[str] = Counter()
    for stat in snapshot.statistics("filename"):
        sizes[package_of(stat.traceback[0].filename)] += stat.size
    return [(name, size // 1024) for name, size in sizes.most_common()]


def report(top: int = 25) -> dict[str, object]:
    """What the probe sees of this process's memory now; with $RELAY_MEMORY_ANALYZE=1 also the cyclic
    garbage, tracemalloc's top sites, and RSS after gc.collect and malloc_trim (which changes the
    process: leave it off to see what the relay itself gives back over rounds)."""
    out: dict[str, object] = {"rss_mib": memory_mb(os.getpid())["rss"], "heap": heap_stats(),
                              "maps": mappings(), "files": mappings(by_file=True),
                              "pymalloc": pymalloc_stats()}
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
        _SNAPSHOTS.append(snapshot)  # what grew since the previous report (the first: since start)
        previous = _SNAPSHOTS[-2] if len(_SNAPSHOTS) > 1 else snapshot
        stats = snapshot.compare_to(previous, "lineno")
        out["top"] = [(str(s.traceback), s.size_diff // 1024, s.count_diff) for s in stats[:top]]
        grown = [s for s in snapshot.compare_to(previous, "traceback") if s.count_diff > 0][:8]
        out["top_tracebacks"] = [(s.size_diff // 1024, s.count_diff,
                                  s.traceback.format(limit=8, most_recent_first=True)) for s in grown]
        out["traced_by_package"] = traced_by_package(snapshot)[:top]
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


if __name__ == "__main__":
    probe(sys.argv[1:])

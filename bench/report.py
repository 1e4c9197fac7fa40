"""Render a `BenchRun` as Markdown (the table in bench/README.md) and as JSON."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import TYPE_CHECKING

from bench.emailproxy_target import NAME as EMAILPROXY
from bench.forwarder import FLOOR
from bench.stats import LoadResult, median

if TYPE_CHECKING:
    from bench.run import BenchRun


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(ratio: float | None) -> str:
    """A ratio as "0.41x"; small ones with three decimals ("0.004x") so they do not read as zero."""
    if ratio is None:
        return "-"
    return f"{ratio:,.3f}x" if ratio < 0.1 else f"{ratio:,.2f}x"


def _med(results: list[LoadResult], fn: object) -> float | None:
    values = [v for v in (fn(r) for r in results) if v is not None]  # type: ignore[operator]
    return median(values)


def _ratio(direct: list[LoadResult], relay: list[LoadResult]) -> float | None:
    """Median over repeats of relay msg/s / direct msg/s (runs of one repeat paired).

    Also used for other pairs (emailproxy/direct, relay/emailproxy): the first argument is the divisor.
    """
    pairs = [r.msg_per_s / d.msg_per_s for d, r in zip(direct, relay, strict=False) if d.msg_per_s]
    return median(pairs)


def _lat(results: list[LoadResult]) -> str:
    return " / ".join(_f(_med(results, lambda r, q=q: r.latency_ms(q)), 2) for q in (0.5, 0.95, 0.99))


def _failures(results: list[LoadResult]) -> str:
    return f"{sum(r.failed_sessions for r in results)}/{sum(r.hung_sessions for r in results)}"


def _delivery(results: list[LoadResult]) -> str:
    if all(r.delivery_ok for r in results):
        return f"ok ({sum(r.verify.get('checked', 0) for r in results):,})"
    bad = {k: sum(r.verify.get(k, 0) for r in results) for k in ("missing", "duplicates", "mismatches")}
    return "FAIL " + ", ".join(f"{k} {v}" for k, v in bad.items() if v)


def _cpu_per_msg(results: list[LoadResult]) -> float | None:
    return _med(results, lambda r: r.extra["proxy_cpu_s"] * 1000 / r.messages_ok if r.messages_ok else None)


def _has_emailproxy(run: BenchRun) -> bool:
    return EMAILPROXY in run.targets


def matrix_table(run: BenchRun) -> list[str]:
    """The side-by-side table, one row per cell (emailproxy msg/s and ratio when it ran)."""
    ep = _has_emailproxy(run)
    ep_head = "| emailproxy msg/s | emailproxy/direct " if ep else ""
    out = ["| cell | direct msg/s | relay msg/s | relay/direct | target | met | floor/direct "
           + ep_head + "| relay MiB/s "
           "| latency p50/p95/p99 ms direct | relay | setup p50 ms direct / relay | relay CPU ms/msg "
           "| failed/hung direct, relay | delivery direct, relay |",
           "|---|---:|---:|---:|---:|:-:|---:|" + ("---:|---:|" if ep else "")
           + "---:|---:|---:|---:|---:|---:|---|"]
    for cell in run.cells:
        by = run.results.get(cell.key, {})
        d, r, e = by.get("direct", []), by.get("relay", []), by.get(EMAILPROXY, [])
        floor = _x(_ratio(d, by.get(FLOOR, [])))
        ep_cols = f"| {_f(_med(e, lambda x: x.msg_per_s))} | {_x(_ratio(d, e))} " if ep else ""
        ratio = _ratio(d, r)
        if cell.zero_failures:
            target = "0 failed/hung"
            met = sum(x.failed_sessions + x.hung_sessions for x in r) == 0
        else:
            target = f">= {cell.min_ratio}"
            met = ratio is not None and cell.min_ratio is not None and ratio >= cell.min_ratio
        setup = f"{_f(_med(d, lambda x: x.setup_ms(0.5)), 2)} / {_f(_med(r, lambda x: x.setup_ms(0.5)), 2)}"
        out.append(
            f"| {cell.label} | {_f(_med(d, lambda x: x.msg_per_s))} | {_f(_med(r, lambda x: x.msg_per_s))} "
            f"| {_f(ratio, 2)}x | {target} | {'yes' if met else '**no**'} | {floor} {ep_cols}"
            f"| {_f(_med(r, lambda x: x.mb_per_s))} | {_lat(d)} | {_lat(r)} | {setup} "
            f"| {_f(_cpu_per_msg(r), 2)} | {_failures(d)}, {_failures(r)} | {_delivery(d)}, {_delivery(r)} |")
    return out


def relay_table(run: BenchRun) -> list[str]:
    """Relay-only metrics against their targets."""
    m = run.relay
    out = ["| relay metric | measured | target | met |", "|---|---:|---:|:-:|"]

    def row(label: str, value: float | None, limit: float | None, op: str, digits: int = 1) -> None:
        ok = value is not None and limit is not None and (value <= limit if op == "<=" else value == limit)
        target = "-" if limit is None else f"{op} {limit:g}"
        met = "-" if limit is None else ("yes" if ok else "**no**")
        out.append(f"| {label} | {_f(value, digits)} | {target} | {met} |")

    starts = [m[k] for k in ("startup_s", "startup2_s", "startup3_s") if k in m]
    row(f"startup to first SMTP greeting, s (median of {len(starts)} starts)", median(starts), 0.5, "<=", 3)
    row("idle RSS of a fresh relay, MiB", m.get("idle_rss_mb"), 40.0, "<=")
    row("idle RSS after its first token request and the cold burst (sessions closed), MiB",
        m.get("idle_rss_after_burst_mb"), 40.0, "<=")
    row(f"peak RSS (VmHWM) with {m.get('idle_sessions_open')}/{m.get('idle_sessions')} idle logged-in "
        "SMTP sessions, MiB", m.get("idle_sessions_hwm_mb"), 150.0, "<=")
    row(f"token requests during a cold burst of {m.get('cold_burst_sessions')} sessions "
        f"({m.get('token_requests_before_burst', 0)} before it; delivered {m.get('cold_burst_ok')}, "
        f"failed {m.get('cold_burst_failed')}, hung {m.get('cold_burst_hung')})",
        m.get("cold_burst_token_requests"), 1, "==", 0)
    cell = run.results.get(str(m.get("login_cell")), {})
    row(f"login setup p50 at {m.get('login_cell')} (connect to 235), ms",
        _med(cell.get("relay", []), lambda x: x.setup_ms(0.5)), 5.0, "<=", 2)
    row(f"login setup p50 with {m.get('idle_sessions')} simultaneous logins, ms",
        m.get("idle_sessions_setup_p50_ms"), None, "", 2)
    big = [c for c in run.cells if c.zero_failures]
    if big:
        r = run.results.get(big[0].key, {}).get("relay", [])
        row(f"{big[0].label}: relay CPU per session (connect, login, 1 message, QUIT), ms",
            _med(r, lambda x: x.extra["proxy_cpu_s"] * 1000 / max(1, x.sessions)), None, "", 1)
    row("relay peak RSS (VmHWM) over the whole matrix, MiB", m.get("main_hwm_mb"), None, "")
    return out


def emailproxy_table(run: BenchRun) -> list[str]:
    """emailproxy per cell: the figures behind its msg/s, against the relay."""
    out = ["| cell | emailproxy msg/s | emailproxy/direct | relay/emailproxy | emailproxy MiB/s "
           "| latency p50/p95/p99 ms | setup p50 ms | emailproxy CPU ms/msg | failed/hung | delivery |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for cell in run.cells:
        by = run.results.get(cell.key, {})
        d, r, e = by.get("direct", []), by.get("relay", []), by.get(EMAILPROXY, [])
        if not e:
            continue
        out.append(
            f"| {cell.label} | {_f(_med(e, lambda x: x.msg_per_s))} | {_x(_ratio(d, e))} "
            f"| {_x(_ratio(e, r))} | {_f(_med(e, lambda x: x.mb_per_s))} | {_lat(e)} "
            f"| {_f(_med(e, lambda x: x.setup_ms(0.5)), 2)} | {_f(_cpu_per_msg(e), 2)} | {_failures(e)} "
            f"| {_delivery(e)} |")
    return out


def emailproxy_metrics(run: BenchRun) -> list[str]:
    """emailproxy-only measurements (no targets: it is the comparison, not the system under test)."""
    m = run.emailproxy
    out = ["| emailproxy metric | measured |", "|---|---:|"]

    def row(label: str, value: float | None, digits: int = 1) -> None:
        out.append(f"| {label} | {_f(value, digits)} |")

    starts = [m[k] for k in ("startup_s", "startup2_s") if k in m]
    row(f"startup to first SMTP greeting, s (median of {len(starts)} starts)", median(starts), 3)
    row("idle RSS of a fresh emailproxy, MiB", m.get("idle_rss_mb"))
    row(f"token requests during a cold burst of {m.get('cold_burst_sessions')} sessions "
        f"({m.get('token_requests_before_burst', 0)} before it; delivered {m.get('cold_burst_ok')}, "
        f"failed {m.get('cold_burst_failed')}, hung {m.get('cold_burst_hung')})",
        m.get("cold_burst_token_requests"), 0)
    row(f"CPU per session (connect, login, 1 message, QUIT; {m.get('seq_sessions')} sequential sessions, "
        "token cached), ms", m.get("seq_cpu_ms_per_session"))
    row("login setup p50 of those sequential sessions (connect to 235), ms", m.get("seq_setup_p50_ms"), 2)
    cell = run.results.get(str(run.relay.get("login_cell")), {})
    row(f"login setup p50 at {run.relay.get('login_cell')} (connect to 235), ms",
        _med(cell.get(EMAILPROXY, []), lambda x: x.setup_ms(0.5)), 2)
    row("emailproxy peak RSS (VmHWM) over the whole matrix, MiB", m.get("main_hwm_mb"))
    return out


OLD = "old"  # bench.run.OLD (not imported: bench.run imports this module)
WITHIN = 0.05  # the new relay may be at most this much slower than the old one


def old_table(run: BenchRun) -> list[str]:
    """New relay vs the relay of another checkout (``--old-root``), cell by cell, same run."""
    out = ["| cell | old msg/s | new msg/s | new/old | within 5% | old/direct | new/direct | floor/direct "
           "| CPU ms/msg old / new | latency p50 ms old / new | failed/hung old, new | delivery old, new |",
           "|---|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|---|"]
    for cell in run.cells:
        by = run.results.get(cell.key, {})
        d, r, o = by.get("direct", []), by.get("relay", []), by.get(OLD, [])
        if not o:
            continue
        ratio = _ratio(o, r)
        ok = "-" if ratio is None else ("yes" if ratio >= 1 - WITHIN else "**no**")
        floor = _x(_ratio(d, by.get(FLOOR, [])))
        p50 = [_f(_med(x, lambda v: v.latency_ms(0.5)), 2) for x in (o, r)]
        out.append(
            f"| {cell.label} | {_f(_med(o, lambda x: x.msg_per_s))} | {_f(_med(r, lambda x: x.msg_per_s))} "
            f"| {_x(ratio)} | {ok} | {_x(_ratio(d, o))} | {_x(_ratio(d, r))} | {floor} "
            f"| {_f(_cpu_per_msg(o), 2)} / {_f(_cpu_per_msg(r), 2)} "
            f"| {p50[0]} / {p50[1]} "
            f"| {_failures(o)}, {_failures(r)} | {_delivery(o)}, {_delivery(r)} |")
    return out


def pool_table(run: BenchRun) -> list[str]:
    """The upstream-pool experiment."""
    out = ["| target | msg/s | latency p50 / p95 ms | setup p50 ms | upstream SMTP connections "
           "| upstream AUTHs | messages | failed/hung |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in run.pool.items():
        out.append(f"| {name} | {_f(r.msg_per_s, 2)} | {_f(r.latency_ms(0.5))} / {_f(r.latency_ms(0.95))} "
                   f"| {_f(r.setup_ms(0.5))} | {r.extra.get('up_smtp_connections', 0):.0f} "
                   f"| {r.extra.get('up_smtp_auths', 0):.0f} | {r.messages_ok} "
                   f"| {r.failed_sessions}/{r.hung_sessions} |")
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=False, timeout=5).stdout.strip() or "?"
    except OSError:
        return "?"


def render(run: BenchRun) -> str:
    """The whole Markdown report."""
    lines = [
        f"Run {run.started_at}, commit {_commit()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, {run.repeats} repeat(s), {run.duration_s:.0f} s. "
        "Figures are medians over repeats; relay/direct is the median of the per-repeat ratios.",
        "",
        *matrix_table(run),
        "",
        *relay_table(run),
        *(_emailproxy_section(run) if _has_emailproxy(run) else []),
        *(["", "New relay (this tree) vs `old` (`--old-root`), same run, order rotating per repeat; "
           "new/old is the median of per-repeat ratios.", "", *old_table(run)] if OLD in run.targets else []),
        "",
        f"Upstream pool experiment: {run.relay.get('pool_latency_ms', 0):g} ms added upstream latency per "
        "reply; "
        "each client opens one connection per message.",
        "",
        *pool_table(run),
    ]
    if run.notes:
        lines += ["", *(f"- {n}" for n in run.notes)]
    return "\n".join(lines) + "\n"


def _emailproxy_section(run: BenchRun) -> list[str]:
    m = run.emailproxy
    reps = m.get("repeats", run.repeats)
    timeout = m.get("session_timeout_s")
    return [
        "",
        f"emailproxy {m.get('version', '?')} (third target, `--no-gui`, default INFO logging; "
        f"{reps} repeat(s){f', session timeout {timeout:g} s' if timeout else ''}). "
        "emailproxy/direct and relay/emailproxy are medians of per-repeat ratios.",
        "",
        *emailproxy_table(run),
        "",
        *emailproxy_metrics(run),
    ]


def _result_json(r: LoadResult) -> dict[str, object]:
    return {"msg_per_s": r.msg_per_s, "mb_per_s": r.mb_per_s, "messages_ok": r.messages_ok,
            "wall_s": r.wall_s, "latency_ms": {q: r.latency_ms(q) for q in (0.5, 0.95, 0.99)},
            "setup_ms": {q: r.setup_ms(q) for q in (0.5, 0.95)}, "failed": r.failed_sessions,
            "hung": r.hung_sessions, "errors": dict(r.errors), "verify": r.verify,
            "loadgen_cpu_s": r.loadgen_cpu_s, "extra": r.extra}


def to_json(run: BenchRun) -> dict[str, object]:
    """The raw figures."""
    return {"started_at": run.started_at, "repeats": run.repeats, "duration_s": run.duration_s,
            "cells": {k: {t: [_result_json(r) for r in rs] for t, rs in v.items()}
                      for k, v in run.results.items()},
            "targets": run.targets, "relay": run.relay, "emailproxy": run.emailproxy,
            "pool": {k: _result_json(v) for k, v in run.pool.items()}}

"""`python -m bench run`: the matrix side by side (direct vs relay [vs emailproxy]), then relay metrics.

Every cell runs once per repeat against each target, the order rotating each repeat so drift in a
shared, noisy machine hits every target alike. emailproxy (bench/emailproxy_target.py) is the
optional third target, run when it is installed unless ``--no-emailproxy`` is given. Results go to
a Markdown table (bench/report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

if not __package__:  # `python bench/run.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import emailproxy_target
from bench.emailproxy_target import EmailProxyProcess
from bench.forwarder import FLOOR, ForwarderProcess
from bench.loadgen import (
    LoadSpec,
    Target,
    close_all,
    open_idle_smtp,
    run_imap,
    run_pop3,
    run_smtp,
    verify_smtp,
)
from bench.matrix import FULL, FULL_SPECIALS, QUICK, QUICK_SPECIALS, Cell, Specials, with_tag
from bench.relay_target import MAILBOX, PASSWORD, USERNAME, RelayProcess
from bench.stats import LoadResult
from bench.upstream import raise_fd_limit
from bench.upstream_proc import UpstreamProcess

Log = Callable[..., None]
OLD = "old"  # the target name of the relay from another checkout (--old-root)
SETTLE_S = 0.3  # between runs: lets closed sessions leave the servers' books


class Proxy(Protocol):
    """A proxy process under test (RelayProcess, EmailProxyProcess): its CPU time and memory."""

    def cpu_s(self) -> float:
        """CPU seconds used so far."""
        ...

    def memory(self) -> dict[str, float]:
        """Current (rss) and peak (hwm) resident memory in MiB."""
        ...


@dataclass(frozen=True)
class Leg:
    """One target of the matrix: how to log in, the process behind it, its session timeout cap."""

    target: Target
    proc: Proxy | None = None
    timeout_s: float | None = None  # replaces the cells' session timeout when set


@dataclass
class BenchRun:
    """Everything one `bench run` measured."""

    cells: list[Cell]
    repeats: int
    results: dict[str, dict[str, list[LoadResult]]] = field(default_factory=dict)  # cell -> target -> runs
    relay: dict[str, object] = field(default_factory=dict)  # relay-only metrics
    emailproxy: dict[str, object] = field(default_factory=dict)  # emailproxy-only metrics (empty: not run)
    targets: list[str] = field(default_factory=lambda: ["direct", "relay", FLOOR])
    pool: dict[str, LoadResult] = field(default_factory=dict)  # target -> result
    notes: list[str] = field(default_factory=list)
    started_at: str = ""
    duration_s: float = 0.0


def direct_target(up: UpstreamProcess) -> Target:
    """Log in to the bench upstream itself with XOAUTH2, as an OAuth-capable app would."""
    ctx = ssl.create_default_context(cafile=str(up.cert))
    return Target("direct", "direct", "127.0.0.1", up.ports["smtp"], up.ports["pop3"], MAILBOX,
                  up.issue_token(), ctx, imap_port=up.ports["imap"])


def relay_target(relay: RelayProcess, name: str = "relay") -> Target:
    """Log in to the relay with the local password, as a legacy app does."""
    return Target(name, "relay", "127.0.0.1", relay.smtp_port, relay.pop3_port, USERNAME, PASSWORD,
                  imap_port=relay.imap_port)


def floor_target(up: UpstreamProcess, fw: ForwarderProcess) -> Target:
    """The direct client, through the do-nothing byte forwarder (bench/forwarder.py)."""
    return replace(direct_target(up), name=FLOOR, smtp_port=fw.smtp_port, pop3_port=fw.pop3_port,
                   imap_port=fw.imap_port)


def emailproxy_target_of(ep: EmailProxyProcess) -> Target:
    """Log in to emailproxy as its users do: the account (mailbox) name and a password."""
    return Target(emailproxy_target.NAME, "relay", "127.0.0.1", ep.smtp_port, ep.pop3_port, MAILBOX, PASSWORD,
                  imap_port=ep.imap_port)


async def run_once(spec: LoadSpec, target: Target, up: UpstreamProcess, digests: list[str],
                   proc: Proxy | None) -> LoadResult:
    """One load run with verification, proxy CPU and upstream counters attached."""
    up.reset()
    cpu0 = proc.cpu_s() if proc else 0.0
    if spec.protocol == "smtp":
        result = await run_smtp(target, spec)
    elif spec.protocol == "imap":
        result = await run_imap(target, spec, digests)
    else:
        result = await run_pop3(target, spec, digests)
    if proc is not None:
        result.extra["proxy_cpu_s"] = proc.cpu_s() - cpu0
        result.extra["proxy_rss_mb"] = proc.memory()["rss"]
    counts = up.stats()
    result.extra.update({f"up_{k}": float(v) for k, v in counts.items()})
    if spec.protocol == "smtp":
        verify_smtp(result, up.delivered())
    if isinstance(proc, EmailProxyProcess):  # it may still be busy with sessions the client gave up on
        result.extra["quiesce_s"] = await proc.quiesce()
    await asyncio.sleep(SETTLE_S)
    return result


async def warm_up(target: Target, up: UpstreamProcess) -> None:
    """One message through the relay: token fetched, password hash cached, code paths loaded."""
    await run_smtp(target, LoadSpec("smtp", 1, 1, 1024, tag="warmup"))
    up.reset()


async def run_matrix(run: BenchRun, up: UpstreamProcess, legs: list[Leg], log: Log,
                     limited: dict[str, int] | None = None) -> None:
    """All cells x repeats x targets, rotating the order of the targets per repeat.

    ``limited``: target name -> the number of (first) repeats it runs in.
    """
    limited = limited or {}
    for repeat in range(run.repeats):
        active = [leg for leg in legs if repeat < limited.get(leg.target.name, run.repeats)]
        shift = repeat % len(active)
        order = active[shift:] + active[:shift]
        for cell in run.cells:
            digests = up.load_mailbox(cell.mailbox, cell.spec.size) if cell.mailbox else []
            for leg in order:
                target = leg.target
                if cell.spec.protocol == "imap" and not target.imap_port:
                    continue  # a target without an IMAP side (Target.imap_port 0)
                spec = with_tag(cell, f"{cell.key}-{target.name}-{repeat}")
                if leg.timeout_s is not None:
                    spec = replace(spec, session_timeout_s=leg.timeout_s)
                result = await run_once(spec, target, up, digests, leg.proc)
                run.results.setdefault(cell.key, {}).setdefault(target.name, []).append(result)
                log(f"repeat {repeat + 1}/{run.repeats} {cell.key:14} {target.name:10} "
                    f"{result.msg_per_s:9.1f} msg/s {result.mb_per_s:7.1f} MiB/s "
                    f"fail {result.failed_sessions} hung {result.hung_sessions} verify {result.verify}")


async def run_cold_burst(run: BenchRun, up: UpstreamProcess, workdir: Path, sp: Specials, log: Log) -> None:
    """A fresh relay: startup, idle RSS, then a burst of sessions with no token cached yet."""
    up.reset()
    relay = RelayProcess(up, workdir, "relay-cold")
    startup = relay.start()
    try:
        await asyncio.sleep(1.0)
        idle = relay.memory()
        before = up.stats().get("token_requests", 0)
        spec = LoadSpec("smtp", sp.cold_burst_sessions, 1, 1024, tag="cold")
        result = await run_smtp(relay_target(relay), spec)
        verify_smtp(result, up.delivered())
        await asyncio.sleep(1.0)  # sessions closed; the token client (httpx) is loaded now
        after = relay.memory()
        run.relay.update({
            "startup_s": startup, "idle_rss_mb": idle["rss"], "idle_rss_after_burst_mb": after["rss"],
            "cold_burst_sessions": sp.cold_burst_sessions,
            "cold_burst_token_requests": up.stats().get("token_requests", 0),
            "token_requests_before_burst": before,
            "cold_burst_ok": result.messages_ok, "cold_burst_failed": result.failed_sessions,
            "cold_burst_hung": result.hung_sessions, "cold_burst_verify": result.verify,
        })
        log(f"cold burst: startup {startup * 1000:.0f} ms, idle RSS {idle['rss']:.1f} MiB, "
            f"token requests {run.relay['cold_burst_token_requests']}, verify {result.verify}")
    finally:
        relay.stop()


async def run_emailproxy_cold(run: BenchRun, up: UpstreamProcess, workdir: Path, sp: Specials,
                              log: Log) -> None:
    """A fresh emailproxy: startup, idle RSS, a cold burst, then CPU per sequential session."""
    up.reset()
    ep = EmailProxyProcess(up, workdir, "emailproxy-cold")
    startup = ep.start()
    try:
        await asyncio.sleep(1.0)
        idle = ep.memory()
        before = up.stats().get("token_requests", 0)
        spec = LoadSpec("smtp", sp.cold_burst_sessions, 1, 1024, tag="ep-cold")
        if sp.emailproxy_timeout_s is not None:
            spec = replace(spec, session_timeout_s=sp.emailproxy_timeout_s)
        target = emailproxy_target_of(ep)
        result = await run_smtp(target, spec)
        verify_smtp(result, up.delivered())
        tokens = up.stats().get("token_requests", 0)
        await ep.quiesce()
        # Token cached now: each session pays connect, login (its key derivation), 1 message, QUIT.
        seq = await run_once(LoadSpec("smtp", 1, sp.cpu_sessions, 1024, one_connection_per_message=True,
                                      tag="ep-seq"), target, up, [], ep)
        run.emailproxy.update({
            "version": emailproxy_target.version(), "startup_s": startup, "idle_rss_mb": idle["rss"],
            "cold_burst_sessions": sp.cold_burst_sessions, "cold_burst_token_requests": tokens,
            "token_requests_before_burst": before, "cold_burst_ok": result.messages_ok,
            "cold_burst_failed": result.failed_sessions, "cold_burst_hung": result.hung_sessions,
            "cold_burst_verify": result.verify, "cold_burst_wall_s": result.wall_s,
            "seq_sessions": sp.cpu_sessions, "seq_ok": seq.messages_ok,
            "seq_failed": seq.failed_sessions + seq.hung_sessions,
            "seq_cpu_ms_per_session": seq.extra["proxy_cpu_s"] * 1000 / max(1, sp.cpu_sessions),
            "seq_setup_p50_ms": seq.setup_ms(0.5),
        })
        log(f"emailproxy {run.emailproxy['version']} cold burst: startup {startup * 1000:.0f} ms, idle RSS "
            f"{idle['rss']:.1f} MiB, token requests {tokens}, delivered {result.messages_ok}, "
            f"hung {result.hung_sessions}; CPU per sequential session "
            f"{run.emailproxy['seq_cpu_ms_per_session']:.0f} ms")
    finally:
        ep.stop()


async def run_idle_sessions(run: BenchRun, up: UpstreamProcess, workdir: Path, sp: Specials,
                            log: Log) -> None:
    """A fresh relay holding ``idle_sessions`` logged-in, idle SMTP sessions: its peak RSS."""
    relay = RelayProcess(up, workdir, "relay-idle")
    startup = relay.start()
    try:
        await warm_up(relay_target(relay), up)
        writers, result = await open_idle_smtp(relay_target(relay), sp.idle_sessions)
        await asyncio.sleep(sp.idle_hold_s)
        held = relay.memory()
        close_all(writers)
        await asyncio.sleep(SETTLE_S)
        run.relay.update({
            "startup2_s": startup, "idle_sessions": sp.idle_sessions, "idle_sessions_open": len(writers),
            "idle_sessions_failed": result.failed_sessions + result.hung_sessions,
            "idle_sessions_rss_mb": held["rss"], "idle_sessions_hwm_mb": held["hwm"],
            "idle_sessions_setup_p50_ms": result.setup_ms(0.5),
        })
        log(f"idle sessions: {len(writers)}/{sp.idle_sessions} open, RSS {held['rss']:.1f} MiB, "
            f"HWM {held['hwm']:.1f} MiB")
    finally:
        relay.stop()


async def run_pool(run: BenchRun, up: UpstreamProcess, relay: RelayProcess, workdir: Path, sp: Specials,
                   log: Log, ep: EmailProxyProcess | None = None) -> None:
    """Upstream latency + one connection per message: direct vs relay vs relay with upstream_pool
    (vs emailproxy)."""
    pooled = RelayProcess(up, workdir, "relay-pool", pool=True)
    pooled.start()
    try:
        await warm_up(relay_target(pooled, "relay+pool"), up)
        up.set_latency_ms(sp.pool_latency_ms)
        run.relay["pool_latency_ms"] = sp.pool_latency_ms
        spec = LoadSpec("smtp", sp.pool_clients, sp.pool_messages, 1024, one_connection_per_message=True,
                        session_timeout_s=120)
        legs: list[tuple[Target, Proxy | None]] = [(direct_target(up), None), (relay_target(relay), relay),
                                                   (relay_target(pooled, "relay+pool"), pooled)]
        if ep is not None:
            legs.append((emailproxy_target_of(ep), ep))
        for target, proc in legs:
            result = await run_once(replace(spec, tag=f"pool-{target.name}"), target, up, [], proc)
            run.pool[target.name] = result
            log(f"pool: {target.name:10} {result.msg_per_s:7.2f} msg/s p50 {result.latency_ms(0.5)} ms "
                f"upstream connections {result.extra.get('up_smtp_connections')}")
    finally:
        up.set_latency_ms(0)
        pooled.stop()


async def bench(quick: bool, repeats: int, log: Log, *, emailproxy: bool = True,
                emailproxy_repeats: int | None = None, only: str | None = None,
                old_root: Path | None = None) -> BenchRun:
    """Run the whole benchmark; return what it measured.

    ``emailproxy``: add it as a third target when it is installed; ``emailproxy_repeats``: run it
    only in that many (first) repeats (default: all); ``only``: just the cells whose key starts
    with this prefix (``imap``), still with the relay metrics and experiments; ``old_root``: another
    checkout (e.g. the commit before a change) whose relay runs as one more target, ``old``.
    """
    raise_fd_limit()
    cells = [c for c in (QUICK if quick else FULL) if only is None or c.key.startswith(only)]
    run = BenchRun(cells=cells, repeats=repeats, started_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    sp = QUICK_SPECIALS if quick else FULL_SPECIALS
    use_ep = emailproxy and emailproxy_target.available()
    if emailproxy and not use_ep:
        run.notes.append("emailproxy is not installed (`pip install emailproxy`): the third target was "
                         "skipped.")
    if use_ep:
        run.targets.append(emailproxy_target.NAME)
    if old_root is not None:
        run.targets.append(OLD)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    up = UpstreamProcess(workdir)
    up.start()
    try:
        await run_cold_burst(run, up, workdir, sp, log)
        if use_ep:
            await run_emailproxy_cold(run, up, workdir, sp, log)
        relay = RelayProcess(up, workdir, "relay-main")
        fw = ForwarderProcess(up.ports["smtp"], up.ports["pop3"], up.ports["imap"])
        ep = EmailProxyProcess(up, workdir, "emailproxy-main") if use_ep else None
        old = RelayProcess(up, workdir, "relay-old", root=old_root) if old_root is not None else None
        try:
            run.relay["startup3_s"] = relay.start()
            await warm_up(relay_target(relay), up)
            legs = [Leg(direct_target(up)), Leg(relay_target(relay), relay), Leg(floor_target(up, fw))]
            limited: dict[str, int] = {}
            if old is not None:
                run.relay["old_startup_s"] = old.start()
                await warm_up(relay_target(old, OLD), up)
                legs.append(Leg(relay_target(old, OLD), old))
            if ep is not None:
                run.emailproxy["startup2_s"] = ep.start()
                await warm_up(emailproxy_target_of(ep), up)
                legs.append(Leg(emailproxy_target_of(ep), ep, sp.emailproxy_timeout_s))
                run.emailproxy["session_timeout_s"] = sp.emailproxy_timeout_s
                if emailproxy_repeats is not None and emailproxy_repeats < repeats:
                    limited[emailproxy_target.NAME] = max(1, emailproxy_repeats)
                run.emailproxy["repeats"] = limited.get(emailproxy_target.NAME, repeats)
            await run_matrix(run, up, legs, log, limited)
            run.relay["main_hwm_mb"] = relay.memory()["hwm"]
            if ep is not None:
                run.emailproxy["main_hwm_mb"] = ep.memory()["hwm"]
            await run_pool(run, up, relay, workdir, sp, log, ep)
        finally:
            relay.stop()
            fw.stop()
            if ep is not None:
                ep.stop()
            if old is not None:
                old.stop()
        await run_idle_sessions(run, up, workdir, sp, log)
        run.relay["login_cell"] = sp.login_cell
    finally:
        up.stop()
    run.duration_s = time.perf_counter() - started
    return run


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    from bench.report import render, to_json  # noqa: PLC0415 - keeps import errors near their use

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the benchmark matrix and write a Markdown table")
    p.add_argument("--quick", action="store_true", help="a tiny matrix (seconds; used by the smoke test)")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell and target (default 3)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here (default: stdout)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw figures as JSON")
    p.add_argument("--no-emailproxy", action="store_true",
                   help="do not run emailproxy as a third target even when it is installed")
    p.add_argument("--emailproxy-repeats", type=int, default=1, metavar="N",
                   help="run emailproxy only in the first N repeats (default 1: its hung sessions wait "
                        "out the session timeout, ~9 min per repeat)")
    p.add_argument("--only", default=None, metavar="PREFIX",
                   help="only the cells whose key starts with PREFIX (e.g. imap, pop3-1m)")
    p.add_argument("--old-root", type=Path, default=None, metavar="DIR",
                   help="also run the relay of this checkout as target `old` (e.g. `git worktree add "
                        "/tmp/old COMMIT`): new vs old in the same run")
    g = sub.add_parser("graph", help="SMTP 100 KB via Microsoft Graph vs via SMTP XOAUTH2 (sandbox fakes)")
    from bench import graph_cell  # noqa: PLC0415

    graph_cell.add_arguments(g)
    g.add_argument("--out", type=Path, default=None, help="write the Markdown table here (default: stdout)")
    args = parser.parse_args(argv)
    if args.command == "graph":
        table = graph_cell.run(args)
        if args.out:
            args.out.write_text(table)
        else:
            print(table)
        return 0

    def log(*parts: object) -> None:
        print(*parts, file=sys.stderr, flush=True)

    run = asyncio.run(bench(args.quick, max(1, args.repeats), log, emailproxy=not args.no_emailproxy,
                            emailproxy_repeats=args.emailproxy_repeats, only=args.only,
                            old_root=args.old_root))
    table = render(run)
    if args.out:
        args.out.write_text(table)
        log(f"wrote {args.out}")
    else:
        print(table)
    if args.json:
        args.json.write_text(json.dumps(to_json(run), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

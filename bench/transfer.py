"""`python -m bench.transfer`: per-message cost of the transfer phase alone (logins excluded).

One client session logs in to each target, sends ``--warmup`` messages, then ``--messages`` more
one by one (SMTP: MAIL, RCPT, DATA, each waiting for its reply; POP3: RETR of a ``--size``
message). Per target it prints wall-clock msg/s, the target's CPU ms per message (nanosecond run
time from /proc/PID/task/*/schedstat), how often the kernel preempted it per message and, with
``--callgrind``, the instructions it executed per message (valgrind's callgrind, counters zeroed
after the warm-up and dumped after the loop): a figure that does not depend on the machine's load.

Targets: ``relay`` (this tree), ``old`` (the relay of another checkout, ``--old-root``, e.g. a
``git worktree`` of the commit before a change) and ``emailproxy`` (when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import child, emailproxy_target
from bench.content import MessageFactory, unstuff
from bench.emailproxy_target import EmailProxyProcess
from bench.loadgen import MAIL_FROM, RCPT_TO, Target, _reply, _smtp_login, _status
from bench.relay_target import RelayProcess
from bench.run import emailproxy_target_of, relay_target
from bench.upstream_proc import REPO_ROOT, UpstreamProcess
from bench.wire import read_dot_terminated, set_nodelay
from relay.tokens.store import generate_key

VALGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-systime=no"]


@dataclass
class Measured:
    """What one target did over the measured loop."""

    name: str
    messages: int
    wall_s: float
    cpu_s: float
    instructions: int | None = None
    preempted: int = 0

    def row(self) -> str:
        """A Markdown table row."""
        ir = f"{self.instructions / self.messages / 1000:,.0f} k" if self.instructions else "-"
        return (f"| {self.name} | {self.messages} | {self.messages / self.wall_s:,.0f} | "
                f"{self.cpu_s * 1000 / self.messages:.3f} | {ir} | "
                f"{self.preempted / self.messages:.2f} |")


class Wrapped(RelayProcess):
    """A relay started from ``root`` (this tree or an old checkout), optionally under callgrind."""

    def __init__(self, up: UpstreamProcess, workdir: Path, name: str, root: Path,
                 prefix: list[str], extra: dict[str, object] | None = None) -> None:
        super().__init__(up, workdir, name, extra=extra, root=root)
        self.prefix = prefix

    def start(self) -> float:
        """Spawn the relay of ``root`` (with its own code first on the path)."""
        env = {**os.environ, "RELAY_STORE_KEY": generate_key(), "PYTHONPATH": str(self.root),
               "PYTHONHASHSEED": "0"}
        return self.spawn([*self.prefix, sys.executable, "-m", "relay", "serve", "-c",
                           str(self.config_path), "--log-level", self.log_level], env=env, cwd=self.root)


class WrappedProxy(EmailProxyProcess):
    """emailproxy, optionally under callgrind."""

    prefix: list[str] = []

    def spawn(self, args: list[str], *, env: dict[str, str], cwd: Path) -> float:
        """Prefix the command line."""
        return super().spawn([*self.prefix, *args], env={**env, "PYTHONHASHSEED": "0"}, cwd=cwd)


async def smtp_loop(target: Target, count: int, size: int, tag: str,
                    session: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """``count`` messages one by one on a logged-in session."""
    reader, writer = session
    factory = MessageFactory(size, MAIL_FROM, [RCPT_TO])
    for i in range(count):
        writer.write(f"MAIL FROM:<{MAIL_FROM}>\r\n".encode())
        await _reply(reader, "MAIL", 250)
        writer.write(f"RCPT TO:<{RCPT_TO}>\r\n".encode())
        await _reply(reader, "RCPT", 250)
        writer.write(b"DATA\r\n")
        await _reply(reader, "DATA", 354)
        writer.write(b"".join([*factory.wire(f"{tag}-{i}"), b".\r\n"]))  # one write: no Nagle wait
        await _reply(reader, "end of DATA", 250)


async def pop3_login(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """USER/PASS to a local proxy."""
    reader, writer = await asyncio.open_connection(target.host, target.pop3_port, limit=1 << 22)
    set_nodelay(writer)
    await _status(reader, "greeting")
    writer.write(f"USER {target.user}\r\n".encode())
    await _status(reader, "USER")
    writer.write(f"PASS {target.secret}\r\n".encode())
    await _status(reader, "PASS")
    return reader, writer


async def pop3_loop(digests: list[str], count: int,
                    session: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """``count`` RETRs one by one, each checked against the mailbox's digest."""
    reader, writer = session
    for i in range(count):
        index = i % len(digests)
        writer.write(b"RETR %d\r\n" % (index + 1))
        await _status(reader, "RETR")
        content = unstuff(await read_dot_terminated(reader))
        if hashlib.sha256(content).hexdigest() != digests[index]:
            raise RuntimeError(f"RETR {index + 1}: content differs")


def run_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every thread of ``pid`` so far (``/proc/PID/task/*/schedstat``: exact,
    unlike /proc/PID/stat's 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just ended
    return total


def involuntary_switches(pid: int) -> int:
    """Times the kernel preempted ``pid``'s main thread so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def callgrind(pid: int, action: str) -> None:
    """``callgrind_control --zero`` / ``--dump`` on a process running under callgrind."""
    subprocess.run(["callgrind_control", f"--{action}", str(pid)], check=True, capture_output=True,
                   timeout=120)


def dumped_instructions(out_prefix: Path) -> int:
    """Ir of the newest dump (``<prefix>.<pid>.<n>``) written by ``--dump``."""
    dumps = sorted(out_prefix.parent.glob(out_prefix.name + ".*"), key=lambda p: p.stat().st_mtime)
    dumps = [p for p in dumps if re.search(r"\.\d+\.\d+$", p.name) or re.search(r"\.\d+$", p.name)]
    match = re.search(r"^summary:\s+(\d+)", dumps[-1].read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no summary in {dumps[-1]}")
    return int(match.group(1))


async def measure(name: str, proc: child.ChildServer, target: Target, args: argparse.Namespace,
                  digests: list[str], out_prefix: Path | None) -> Measured:
    """Log in, warm up, then time (and count) the measured loop."""
    if args.protocol == "smtp":
        session = await _smtp_login(target, 1 << 22)

        async def loop(n: int, tag: str) -> None:
            await smtp_loop(target, n, args.size, tag, session)
    else:
        session = await pop3_login(target)

        async def loop(n: int, tag: str) -> None:
            await pop3_loop(digests, n, session)
    await loop(args.warmup, f"{name}-warm")
    if out_prefix is not None:
        await asyncio.to_thread(callgrind, proc.pid, "zero")
    spy = None
    if args.py_spy:  # sample the measured loop only; py-spy writes its file on SIGINT
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--format", "raw",
                                "--rate", "500", "-o", f"{args.py_spy}.{name}.txt"],
                               stdout=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
    ns0, ivcs0, t0 = run_ns(proc.pid), involuntary_switches(proc.pid), time.perf_counter()
    await loop(args.messages, f"{name}-run")
    wall = time.perf_counter() - t0
    cpu, ivcs = (run_ns(proc.pid) - ns0) / 1e9, involuntary_switches(proc.pid) - ivcs0
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        await asyncio.to_thread(spy.wait, 60)
    ir = None
    if out_prefix is not None:
        await asyncio.to_thread(callgrind, proc.pid, "dump")
        ir = dumped_instructions(out_prefix)
    session[1].transport.abort()
    return Measured(name, args.messages, wall, cpu, ir, ivcs)


async def run(args: argparse.Namespace) -> list[Measured]:
    """Every requested target, one after the other, against one bench upstream."""
    child.STARTUP_TIMEOUT_S = 600.0 if args.callgrind else child.STARTUP_TIMEOUT_S
    workdir = Path(tempfile.mkdtemp(prefix="relay-transfer-"))
    up = UpstreamProcess(workdir)
    up.start()
    results: list[Measured] = []
    try:
        pop3 = args.protocol == "pop3"
        digests = up.load_mailbox(max(20, min(args.messages, 100)), args.size) if pop3 else []
        for index, name in enumerate(args.targets):  # a name may repeat (interleaved rounds)
            run_dir = workdir / f"run{index}"
            out = run_dir / f"callgrind.{name}" if args.callgrind else None
            prefix = [*VALGRIND, f"--callgrind-out-file={out}.%p"] if out else []
            proc: child.ChildServer
            if name == "emailproxy":
                if not emailproxy_target.available():
                    print("emailproxy is not installed: skipped", file=sys.stderr)
                    continue
                WrappedProxy.prefix = prefix
                ep = WrappedProxy(up, run_dir, name)
                proc, target = ep, emailproxy_target_of(ep)
            else:
                root = Path(args.old_root) if name == "old" else REPO_ROOT
                # relay-admin: this tree with the admin listener on (metrics collected, issue 15)
                admin = {"admin": {"host": "127.0.0.1", "port": child.free_port()}}
                extra = admin if name == "relay-admin" else None
                relay = Wrapped(up, run_dir, name, root, prefix, extra)
                proc, target = relay, relay_target(relay, name)
            proc.start()
            try:
                results.append(await measure(name, proc, target, args, digests,
                                             Path(f"{out}.{proc.pid}") if out else None))
                print(results[-1].row(), file=sys.stderr, flush=True)
            finally:
                proc.stop()
            up.reset()
    finally:
        up.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__)
    parser.add_argument("targets", nargs="*", default=["relay"],
                        help="relay, relay-admin, old, emailproxy (in order)")
    parser.add_argument("--protocol", choices=("smtp", "pop3"), default="smtp")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes (default 1024)")
    parser.add_argument("--messages", type=int, default=2000, help="measured messages (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="messages before measuring (default 200)")
    parser.add_argument("--callgrind", action="store_true", help="run the targets under callgrind")
    parser.add_argument("--py-spy", metavar="PREFIX",
                        help="py-spy samples of the measured loop to PREFIX.<target>.txt")
    parser.add_argument("--old-root", default="/tmp/old",  # noqa: S108 - a path the user chooses
                        help="checkout of the `old` relay")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print(f"{args.protocol.upper()} {args.size} B, C=1, {args.messages} messages after {args.warmup} "
          f"warm-up, load average {os.getloadavg()[0]:.1f}")
    print("| target | messages | msg/s (wall) | CPU ms/msg | instructions/msg | preempted/msg |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in results:
        print(m.row())
    summary(results)
    return 0


def summary(results: list[Measured]) -> None:
    """Per target repeated in the run (interleaved rounds): median and range of CPU and msg/s."""
    names = dict.fromkeys(m.name for m in results)
    if len(results) == len(names):
        return
    print("\n| target | runs | CPU ms/msg median (range) | msg/s median (range) |")
    print("|---|---:|---:|---:|")
    for name in names:
        runs = [m for m in results if m.name == name]
        cpu = sorted(m.cpu_s * 1000 / m.messages for m in runs)
        rate = sorted(m.messages / m.wall_s for m in runs)
        print(f"| {name} | {len(runs)} | {statistics.median(cpu):.3f} ({cpu[0]:.3f}-{cpu[-1]:.3f}) | "
              f"{statistics.median(rate):,.0f} ({rate[0]:,.0f}-{rate[-1]:,.0f}) |")


if __name__ == "__main__":
    raise SystemExit(main())

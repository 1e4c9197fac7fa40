"""Issue 22 item 4: file descriptors. At start the relay raises the soft RLIMIT_NOFILE towards the
hard limit or caps max_connections (with a warning); when accept() still runs out of descriptors
on asyncio's loop, each wake-up tries only a small batch instead of the listen backlog (4096
attempts and ERROR lines per wake-up before)."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from relay.config.model import LimitsConfig
from relay.listening import FD_RESERVE, fit_fd_limit

REPO = Path(__file__).resolve().parents[2]


class FakeLimits:
    """A settable RLIMIT_NOFILE (soft, hard) pair with a setrlimit that may refuse."""

    def __init__(self, soft: int, hard: int) -> None:
        self.soft, self.hard = soft, hard

    def get(self) -> tuple[int, int]:
        return self.soft, self.hard

    def set(self, soft: int, hard: int) -> None:
        if soft > self.hard:
            raise ValueError("not allowed")
        self.soft = soft


def test_soft_limit_is_raised_towards_the_hard_limit(caplog):
    """1024 soft, a large hard limit: the soft limit is raised to what the limits need, nothing capped."""
    fake = FakeLimits(1024, 1 << 20)
    limits = LimitsConfig(max_connections=1000)
    fitted = fit_fd_limit(limits, listeners=2, get=fake.get, set=fake.set)
    assert fitted == limits
    assert fake.soft >= 2 * 2 * 1000 + FD_RESERVE


def test_max_connections_is_capped_with_a_warning_when_the_hard_limit_is_low(caplog):
    """Hard limit 1024: max_connections is lowered so both listeners (and one upstream connection
    per session) fit, and a WARNING names the setting and the fix."""
    caplog.set_level(logging.WARNING)
    fake = FakeLimits(256, 1024)
    fitted = fit_fd_limit(LimitsConfig(max_connections=1000), listeners=2, get=fake.get, set=fake.set)
    assert fake.soft == 1024
    assert fitted.max_connections == (1024 - FD_RESERVE) // 4
    assert fitted == dataclasses.replace(LimitsConfig(), max_connections=fitted.max_connections)
    assert any("limits.max_connections" in r.getMessage() and "ulimit -n" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


CHILD = textwrap.dedent("""
    import asyncio, logging, resource, sys
    from relay.listening import accept_batch, listen_backlog, widen_backlog
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
    errors = []
    class Count(logging.Handler):
        def emit(self, record):
            errors.append(record)
    logging.getLogger("asyncio").addHandler(Count())
    held = []
    class Hold(asyncio.Protocol):
        def connection_made(self, transport):
            held.append(transport)
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Hold, "127.0.0.1", 0, backlog=accept_batch(loop, 1000))
        widen_backlog(server, 1000)
        print("PORT", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(float(sys.argv[1]))
        print("ERRORS", len(errors), "HELD", len(held), flush=True)
    asyncio.run(main())
""")


def test_accept_out_of_descriptors_tries_a_small_batch_per_wake_up(tmp_path):
    """A listener out of descriptors (soft limit 40, 150 clients) logs a handful of accept errors
    per second on asyncio's loop, not thousands."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), "2.5"], stdout=subprocess.PIPE, text=True,
                            env=env)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        for _ in range(150):
            try:
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        for client in clients:
            client.close()
    errors = int(out.split()[1])
    # 36-47 on a quiet machine, 112 seen under a loaded parallel run (more wake-ups in the 2.5 s);
    # without the small batch the first wake-up alone logs one error per backlog slot (4096).
    assert 0 < errors <= 400, out

"""A server under test in its own process: spawned, awaited until it greets, measured, stopped."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.procstat import cpu_seconds, memory_mb

STARTUP_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port that was free a moment ago (the child binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """True once something listens on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def greets(port: int) -> bool:
    """True once something on ``port`` answers with an SMTP 220 greeting."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(64).startswith(b"220")
    except OSError:
        return False


class ChildServer:
    """Base of RelayProcess and EmailProxyProcess: ``output_path`` gets the child's stdout/stderr."""

    label = "the server"
    stop_grace_s = 15.0
    more_ports: tuple[int, ...] = ()  # listeners that start after the SMTP one: ready once they accept

    def __init__(self, output_path: Path, smtp_port: int) -> None:
        self.output_path = output_path
        self.smtp_port = smtp_port
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._proc is not None
        return self._proc.pid

    def spawn(self, args: list[str], *, env: dict[str, str], cwd: Path) -> float:
        """Start ``args``; return seconds from spawn to the first SMTP greeting on ``smtp_port``
        (having waited for ``more_ports`` to accept as well)."""
        started = time.perf_counter()
        greeted: float | None = None
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                          cwd=cwd, env=env)
        while time.perf_counter() - started < STARTUP_TIMEOUT_S:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self._proc.returncode}; see "
                                   f"{self.output_path}:\n{self.log_tail()}")
            if greeted is None and greets(self.smtp_port):
                greeted = time.perf_counter() - started
            if greeted is not None and all(accepts(port) for port in self.more_ports):
                self.startup_s = greeted
                return greeted
            time.sleep(0.005)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{self.label} did not greet within {STARTUP_TIMEOUT_S:g} s; see "
                           f"{self.output_path}:\n{tail}")

    def cpu_s(self) -> float:
        """CPU seconds the child used so far (all its threads)."""
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        """Current (rss) and peak (hwm) resident memory in MiB."""
        return memory_mb(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the child's output (for error messages)."""
        try:
            return "\n".join(self.output_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL after ``stop_grace_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

"""`relay serve` as a child process: for tests about the process itself (signals, exit codes,
memory of the whole relay, reload). The configuration is a relay.yaml the test wrote (with
tests/support/app_harness.py or by hand); ports come from the relay's own listener log lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.app_harness import wait_until

LISTENER_LINE = re.compile(r"listener (smtp|pop3|imap) on [^:]+:(\d+)")


def relay_cmd(*args: str) -> list[str]:
    """The command line running the installed CLI with this interpreter."""
    return [sys.executable, "-m", "relay", *args]


class ServeProcess:
    """`relay serve` as a subprocess with stderr in a file; ports parsed from its listener log lines."""

    def __init__(self, config_path: Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(relay_cmd("serve", "-c", str(config_path), *extra),
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.ports: dict[str, int] = {}

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout_s: float = 60,
                       listeners: tuple[str, ...] = ("smtp", "pop3")) -> dict[str, int]:
        """Wait for the listener lines of ``listeners``; return {name: port}."""
        def listening() -> bool:
            self.ports = {k: int(p) for k, p in LISTENER_LINE.findall(self.output())}
            if self.proc.poll() is not None and not set(listeners) <= set(self.ports):
                raise AssertionError(f"relay serve exited before listening:\n{self.output()[-4000:]}")
            return set(listeners) <= set(self.ports)

        wait_until(listening, timeout_s, f"relay serve to listen ({', '.join(listeners)})")
        return self.ports

    def wait_for(self, text: str, timeout_s: float = 30) -> None:
        """Wait until ``text`` appears in the output."""
        def seen() -> bool:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"{text!r} not seen (exited):\n{self.output()[-4000:]}")
            return False

        wait_until(seen, timeout_s, f"{text!r} in the output of relay serve")

    def signal(self, signum: int) -> None:
        """Send a signal to the process."""
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float = 60) -> int:
        """Wait for the exit code."""
        return self.proc.wait(timeout=timeout_s)

    def json_lines(self) -> list[dict[str, Any]]:
        """The output parsed as JSON lines (fails on any line that is not JSON)."""
        return [json.loads(line) for line in self.output().splitlines() if line.strip()]

    def close(self) -> None:
        """Kill the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()

"""A private tinyproxy on a free loopback port, with its own config and log (PROTOCOLS.md §8 style:
nothing in /etc is touched). Missing program: the test fails under CI=true, else it is skipped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def require_tinyproxy() -> str:
    """The tinyproxy binary (Debian package ``tinyproxy``)."""
    found = shutil.which("tinyproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin")
    if found:
        return found
    message = "program 'tinyproxy' not found: apt-get install -y --no-install-recommends tinyproxy"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")  # pragma: no cover


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tinyproxy:
    """A running tinyproxy; ``log()`` is its log file's text."""

    port: int
    log_file: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything tinyproxy logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        """Terminate it (by its pid) and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_tinyproxy(directory: Path, *, allow: str = "127.0.0.1", basic_auth: tuple[str, str] | None = None
                    ) -> Tinyproxy:
    """Start tinyproxy in the foreground on a free port; ``allow`` is the client network it serves
    (anything else gets 403), ``basic_auth`` turns on proxy authentication (407 without it)."""
    binary = require_tinyproxy()
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_file = directory / "tinyproxy.log"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{log_file}"', "LogLevel Info",
             "MaxClients 50", f"Allow {allow}"]
    if basic_auth:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    conf = directory / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tinyproxy exited with {process.returncode}; config {conf}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return Tinyproxy(port, log_file, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"tinyproxy did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S}s")

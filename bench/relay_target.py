"""The relay under test: `relay serve -c FILE` in its own process, configured against the bench upstream.

Writes the YAML (docs/architecture.md schema) with a ``generic`` provider whose token endpoint is
the bench upstream's, flow ``client_credentials`` (no authorize step), and upstream endpoints with
``ca_file`` = the bench upstream's certificate. Measures startup to the first SMTP greeting, CPU
seconds and memory of the relay process from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.procstat import cpu_seconds, memory_mb
from bench.upstream_proc import REPO_ROOT, UpstreamProcess
from bench.upstream_state import CLIENT_ID, CLIENT_SECRET
from relay.passwords import hash_password
from relay.tokens.store import generate_key

USERNAME = "bench-app"
PASSWORD = "bench-local-password"  # noqa: S105 - loopback benchmark login
MAILBOX = "bench@example.com"
STARTUP_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port that was free a moment ago (the relay binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relay_config(upstream: UpstreamProcess, workdir: Path, smtp_port: int, pop3_port: int, *,
                 pool: bool = False, password_hash: str) -> dict[str, object]:
    """The relay's YAML configuration as a dict."""
    endpoint = {"host": "127.0.0.1", "ca_file": str(upstream.cert)}
    return {
        "listen": {"smtp": {"enabled": True, "host": "127.0.0.1", "port": smtp_port, "tls": "none"},
                   "pop3": {"enabled": True, "host": "127.0.0.1", "port": pop3_port, "tls": "none"}},
        "token_store": {"path": str(workdir / "tokens.enc"), "key_env": "RELAY_STORE_KEY"},
        "credentials": {"bench": {"provider": "generic", "client_id": CLIENT_ID,
                                  "client_secret": CLIENT_SECRET, "flow": "client_credentials",
                                  "token_url": upstream.token_url, "scopes": ["mail"]}},
        "accounts": {"bench": {
            "username": USERNAME, "password_hash": password_hash, "mailbox": MAILBOX,
            "credentials": "bench",
            "smtp": {**endpoint, "port": upstream.ports["smtp"], "tls": "starttls"},
            "pop3": {**endpoint, "port": upstream.ports["pop3"], "tls": "implicit"},
        }},
        "limits": {"shutdown_grace_s": 2},
        "upstream_pool": {"enabled": pool},
    }


class RelayProcess:
    """One `relay serve` child process with its own config, token store and log file."""

    _hash: str | None = None  # one scrypt hash for every relay of a run

    def __init__(self, upstream: UpstreamProcess, workdir: Path, name: str, *, pool: bool = False,
                 log_level: str = "INFO") -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.smtp_port = free_port()
        self.pop3_port = free_port()
        if RelayProcess._hash is None:
            RelayProcess._hash = hash_password(PASSWORD)
        config = relay_config(upstream, self.workdir, self.smtp_port, self.pop3_port, pool=pool,
                              password_hash=RelayProcess._hash)
        self.config_path = self.workdir / "relay.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.workdir / "relay.log"
        self.log_level = log_level
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The relay's process id."""
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> float:
        """Spawn `relay serve`; return seconds from spawn to the first SMTP greeting."""
        env = {**os.environ, "RELAY_STORE_KEY": generate_key()}
        started = time.perf_counter()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "-c", str(self.config_path),
                 "--log-level", self.log_level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_ROOT, env=env)
        while time.perf_counter() - started < STARTUP_TIMEOUT_S:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the relay exited with {self._proc.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            if _greets(self.smtp_port):
                self.startup_s = time.perf_counter() - started
                return self.startup_s
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"the relay did not greet within {STARTUP_TIMEOUT_S:g} s; see {self.log_path}")

    def cpu_s(self) -> float:
        """CPU seconds the relay used so far."""
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        """Current (rss) and peak (hwm) resident memory in MiB."""
        return memory_mb(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the relay's log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL after 15 s."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _greets(port: int) -> bool:
    """True once something on ``port`` answers with an SMTP 220 greeting."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(64).startswith(b"220")
    except OSError:
        return False

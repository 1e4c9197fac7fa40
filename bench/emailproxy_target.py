"""Optional third target: emailproxy (PyPI "emailproxy", simonrob/email-oauth2-proxy), headless.

Runs ``python -m emailproxy --no-gui --config-file F --cache-store F --log-file F`` (no ``--debug``,
i.e. its default INFO logging) in its own process. The INI config has one ``[SMTP-port]`` section
(``server_starttls = True`` towards the bench upstream), one ``[POP-port]`` and one ``[IMAP-port]``
section (TLS on connect) and one account section named after the mailbox with
``oauth2_flow = client_credentials`` against the bench token endpoint, so no interactive
authorisation is needed. Clients log in with the mailbox as username and any fixed password
(emailproxy encrypts its cached tokens with the login password).
The bench upstream's self-signed certificate is trusted through ``SSL_CERT_FILE``: emailproxy
verifies upstream TLS with ``ssl.create_default_context()``, which loads OpenSSL's default verify
paths, and those honour that variable.
"""

from __future__ import annotations

import asyncio
import configparser
import importlib.util
import os
import sys
import time
from pathlib import Path

from bench.child import ChildServer, free_port
from bench.relay_target import MAILBOX
from bench.upstream_proc import UpstreamProcess
from bench.upstream_state import CLIENT_ID, CLIENT_SECRET

NAME = "emailproxy"
IDLE_THREADS = 2  # --no-gui: the main thread and its accept loop; then one more per open connection


def available() -> bool:
    """True when emailproxy is importable by this Python (``pip install emailproxy``)."""
    return importlib.util.find_spec("emailproxy") is not None


def version() -> str:
    """The installed emailproxy's version, or "?"."""
    try:
        from importlib.metadata import version as dist_version  # noqa: PLC0415

        return dist_version("emailproxy")
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return "?"


def emailproxy_config(upstream: UpstreamProcess, smtp_port: int, pop3_port: int,
                      imap_port: int) -> configparser.ConfigParser:
    """emailproxy's INI configuration: SMTP, POP3 and IMAP servers on loopback and one
    client-credentials account."""
    config = configparser.ConfigParser(interpolation=None)
    config[f"SMTP-{smtp_port}"] = {"local_address": "127.0.0.1", "server_address": "127.0.0.1",
                                   "server_port": str(upstream.ports["smtp"]), "server_starttls": "True"}
    config[f"POP-{pop3_port}"] = {"local_address": "127.0.0.1", "server_address": "127.0.0.1",
                                  "server_port": str(upstream.ports["pop3"])}
    config[f"IMAP-{imap_port}"] = {"local_address": "127.0.0.1", "server_address": "127.0.0.1",
                                   "server_port": str(upstream.ports["imap"])}
    config[MAILBOX] = {"token_url": upstream.token_url, "oauth2_scope": "mail",
                       "oauth2_flow": "client_credentials", "client_id": CLIENT_ID,
                       "client_secret": CLIENT_SECRET}
    return config


class EmailProxyProcess(ChildServer):
    """One headless emailproxy child process with its own config, token cache and log file."""

    label = "emailproxy"
    stop_grace_s = 10.0  # SIGTERM: it saves its cache and exits

    def __init__(self, upstream: UpstreamProcess, workdir: Path, name: str) -> None:
        self.upstream = upstream
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        # stdout/stderr (it also prints each log line)
        super().__init__(self.workdir / "emailproxy.out", free_port())
        self.pop3_port = free_port()
        self.imap_port = free_port()
        self.config_path = self.workdir / "emailproxy.config"
        with self.config_path.open("w") as fh:
            emailproxy_config(upstream, self.smtp_port, self.pop3_port, self.imap_port).write(fh)
        self.cache_path = self.workdir / "emailproxy.cache"  # encrypted tokens; empty at start
        self.log_path = self.workdir / "emailproxy.log"  # its --log-file

    def start(self) -> float:
        """Spawn emailproxy; return seconds from spawn to the first SMTP greeting.

        emailproxy connects upstream when a client connects and relays the upstream's 220, so the
        greeting also proves it can reach the bench upstream.
        """
        env = {**os.environ, "SSL_CERT_FILE": str(self.upstream.cert)}
        return self.spawn([sys.executable, "-m", "emailproxy", "--no-gui", "--config-file",
                           str(self.config_path), "--cache-store", str(self.cache_path), "--log-file",
                           str(self.log_path)], env=env, cwd=self.workdir)

    def threads(self) -> int:
        """Its current thread count (one per open proxied connection, plus a few)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        return 0

    async def quiesce(self, idle_cpu_s: float = 0.02, window_s: float = 0.25,
                      timeout_s: float = 120.0) -> float:
        """Wait until emailproxy is idle again: no CPU burnt (e.g. on logins of sessions the client
        gave up on) and no connection threads left, or 1 s without CPU whatever its threads.

        Returns the seconds waited; keeps the leftovers of a run with hung sessions out of the next run.
        """
        started = time.perf_counter()
        last, quiet = self.cpu_s(), 0
        while time.perf_counter() - started < timeout_s:
            await asyncio.sleep(window_s)
            now = self.cpu_s()
            quiet = quiet + 1 if now - last <= idle_cpu_s else 0
            last = now
            if quiet and (self.threads() <= IDLE_THREADS or quiet * window_s >= 1.0):
                break
        return time.perf_counter() - started

"""The relay under test: `relay serve -c FILE` in its own process, configured against the bench upstream.

Writes the YAML (docs/architecture.md schema) with a ``generic`` provider whose token endpoint is
the bench upstream's, flow ``client_credentials`` (no authorize step), and upstream endpoints with
``ca_file`` = the bench upstream's certificate. Measures startup to the first SMTP greeting, CPU
seconds and memory of the relay process from /proc.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from bench.child import ChildServer, free_port
from bench.upstream_proc import REPO_ROOT, UpstreamProcess
from bench.upstream_state import CLIENT_ID, CLIENT_SECRET
from relay.passwords import hash_password
from relay.tokens.store import generate_key

USERNAME = "bench-app"
PASSWORD = "bench-local-password"  # noqa: S105 - loopback benchmark login
MAILBOX = "bench@example.com"


def relay_config(upstream: UpstreamProcess, workdir: Path, smtp_port: int, pop3_port: int, *,
                 pool: bool = False, password_hash: str, imap_port: int = 0,
                 token_store: dict[str, object] | None = None) -> dict[str, object]:
    """The relay's YAML configuration as a dict (``token_store`` extends the file store's settings)."""
    endpoint = {"host": "127.0.0.1", "ca_file": str(upstream.cert)}
    return {
        "listen": {"smtp": {"enabled": True, "host": "127.0.0.1", "port": smtp_port, "tls": "none"},
                   "pop3": {"enabled": True, "host": "127.0.0.1", "port": pop3_port, "tls": "none"},
                   "imap": {"enabled": bool(imap_port), "host": "127.0.0.1", "port": imap_port,
                            "tls": "none"}},
        "token_store": {"path": str(workdir / "tokens.enc"), "key_env": "RELAY_STORE_KEY",
                        **(token_store or {})},
        "credentials": {"bench": {"provider": "generic", "client_id": CLIENT_ID,
                                  "client_secret": CLIENT_SECRET, "flow": "client_credentials",
                                  "token_url": upstream.token_url, "scopes": ["mail"]}},
        "accounts": {"bench": {
            "username": USERNAME, "password_hash": password_hash, "mailbox": MAILBOX,
            "credentials": "bench",
            "smtp": {**endpoint, "port": upstream.ports["smtp"], "tls": "starttls"},
            "pop3": {**endpoint, "port": upstream.ports["pop3"], "tls": "implicit"},
            "imap": {**endpoint, "port": upstream.ports["imap"], "tls": "implicit"},
        }},
        "limits": {"shutdown_grace_s": 2},
        "upstream_pool": {"enabled": pool},
    }


class RelayProcess(ChildServer):
    """One `relay serve` child process with its own config, token store and log file."""

    label = "the relay"
    _hash: str | None = None  # one scrypt hash for every relay of a run

    def __init__(self, upstream: UpstreamProcess, workdir: Path, name: str, *, pool: bool = False,
                 log_level: str = "INFO", token_store: dict[str, object] | None = None,
                 extra: dict[str, object] | None = None, root: Path = REPO_ROOT) -> None:
        self.root = root  # the checkout whose relay runs (another one: e.g. the commit before a change)
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.workdir / "relay.log", free_port())
        self.pop3_port = free_port()
        self.imap_port = free_port()
        if RelayProcess._hash is None:
            RelayProcess._hash = hash_password(PASSWORD)
        config = relay_config(upstream, self.workdir, self.smtp_port, self.pop3_port, pool=pool,
                              password_hash=RelayProcess._hash, imap_port=self.imap_port,
                              token_store=token_store)
        config.update(extra or {})  # more sections, e.g. admin (bench/admin_overhead.py)
        if not (root / "relay" / "imap").exists():  # a checkout from before the IMAP proxy
            del config["listen"]["imap"]  # type: ignore[attr-defined]
            del config["accounts"]["bench"]["imap"]  # type: ignore[index]
            self.imap_port = 0
        self.more_ports = (self.pop3_port, self.imap_port) if self.imap_port else (self.pop3_port,)
        self.config_path = self.workdir / "relay.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.output_path
        self.log_level = log_level

    def start(self) -> float:
        """Spawn `relay serve`; return seconds from spawn to the first SMTP greeting."""
        env = {**os.environ, "RELAY_STORE_KEY": generate_key()}
        if self.root != REPO_ROOT:  # its own code first on the path, not this tree's editable install
            env["PYTHONPATH"] = str(self.root)
        return self.spawn([sys.executable, "-m", "relay", "serve", "-c", str(self.config_path),
                           "--log-level", self.log_level], env=env, cwd=self.root)

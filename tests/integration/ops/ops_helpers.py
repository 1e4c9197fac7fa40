"""Helpers for the operator-command tests: config files for the sandbox, seeded stores, subprocesses.

``wait_until`` (tests/support/app_harness.py) is re-exported for the ops tests; `relay serve` as a
process is tests/support/serve.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from support.app_harness import wait_until  # noqa: F401 - re-exported for the ops tests
from support.serve import relay_cmd

from relay.sandbox.oauth import DEFAULT_CLIENT_SECRET, DEFAULT_SCOPE
from relay.sandbox.world import SandboxWorld
from relay.secret import Secret
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

PASSWORD = "ops test password 42"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OpsSetup:
    """A configuration file for the sandbox plus its store key; tokens can be seeded per account."""

    world: SandboxWorld
    dir: Path
    key: str
    accounts: dict[str, dict[str, Any]]
    smtp_port: int = 0
    pop3_port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level sections (admin, alerts)

    @classmethod
    def fresh(cls, world: SandboxWorld, directory: Path) -> OpsSetup:
        """A setup in the new ``directory`` (store key file written, 0600) with account 'ops'
        (ops@sandbox.test); the configuration is not written yet."""
        directory.mkdir()
        key = generate_key()
        (directory / "store.key").write_text(key + "\n")
        (directory / "store.key").chmod(0o600)
        setup = cls(world, directory, key, {})
        setup.add_account("ops", "ops@sandbox.test")
        return setup

    @property
    def config_path(self) -> Path:
        """The YAML file."""
        return self.dir / "relay.yaml"

    def add_account(self, name: str, mailbox: str, *, username: str | None = None) -> None:
        """Add an account using the sandbox upstreams (login ``<name>-app``, password PASSWORD)."""
        from relay.passwords import hash_password

        pw_hash = hash_password(PASSWORD, log2_n=10)  # a test cost: every login verifies it
        self.accounts[name] = self.world.account_yaml(username or f"{name}-app", pw_hash, mailbox)

    def write(self) -> Path:
        """Write relay.yaml and return its path."""
        data = {
            "listen": {"smtp": {"enabled": True, "host": "127.0.0.1", "port": self.smtp_port, "tls": "none"},
                       "pop3": {"enabled": True, "host": "127.0.0.1", "port": self.pop3_port, "tls": "none"}},
            "token_store": {"path": str(self.dir / "tokens.enc"), "key_env": None,
                            "key_file": str(self.dir / "store.key")},
            "credentials": self.world.credentials_yaml("sandbox"),
            "accounts": self.accounts,
            "limits": {"auth_failure_delay_s": 0.05, "shutdown_grace_s": 20,
                       "upstream_connect_timeout_s": 10, "upstream_command_timeout_s": 20},
            **self.extra,
        }
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        return self.config_path

    def seed(self, account: str, token_user: str, expires_in_s: float = 3600) -> tuple[str, str]:
        """Store tokens for ``account`` issued to ``token_user`` (as `relay authorize` would)."""
        access = self.world.oauth.issue_access_token(token_user)
        refresh = self.world.oauth.issue_refresh_token(token_user)
        store = EncryptedFileStore(self.dir / "tokens.enc", decode_key(self.key, "test"))
        now = datetime.now(UTC)
        asyncio.run(store.put(TokenSet(account=account, credentials="sandbox", access_token=Secret(access),
                                       expires_at=now + timedelta(seconds=expires_in_s),
                                       refresh_token=Secret(refresh),
                                       scopes=tuple(DEFAULT_SCOPE.split()), obtained_at=now)))
        return access, refresh

    def secrets(self) -> list[str]:
        """Every secret value a log must never contain."""
        found = [PASSWORD, self.key, DEFAULT_CLIENT_SECRET]
        store = EncryptedFileStore(self.dir / "tokens.enc", decode_key(self.key, "test"))
        for tokens in asyncio.run(store.load_all()).values():
            found.append(tokens.access_token.reveal())
            if tokens.refresh_token:
                found.append(tokens.refresh_token.reveal())
        return found


def run_relay(*args: str, input_text: str | None = None,
              timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a short relay command and capture its output."""
    return subprocess.run(relay_cmd(*args), input=input_text, capture_output=True, text=True,
                          timeout=timeout_s, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def enable_admin(setup: OpsSetup, *, token: str | None = ADMIN_TOKEN) -> int:
    """Add an admin listener on a free loopback port (with a bearer token unless None); its port."""
    port = free_port()
    setup.extra["admin"] = {"host": "127.0.0.1", "port": port, **({"auth_token": token} if token else {})}
    return port


def http_get(port: int, path: str, token: str | None = ADMIN_TOKEN, method: str = "GET",
             timeout_s: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request to the admin listener: (status, lower-case headers, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def raw_http(port: int, data: bytes, timeout_s: float = 10) -> bytes:
    """Send raw bytes to a port and read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def send_mail(port: int, user: str, sender: str, to: str, body: str = "hello\r\n") -> None:
    """Log in to the relay's SMTP listener and send one message (raises on any refusal)."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(user, PASSWORD)
        client.sendmail(sender, [to], f"From: {sender}\r\nTo: {to}\r\nSubject: t\r\n\r\n{body}")


def require_program(name: str, package: str) -> str:
    """The path of a program from Debian; under CI=true its absence fails the test, else skips it."""
    import shutil

    import pytest

    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path:
        return path
    message = f"{name} is not installed (apt-get install {package}; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)

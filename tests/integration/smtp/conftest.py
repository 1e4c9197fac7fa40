"""Fixtures for the SMTP relay tests: a RelayApp (tests/support/app_harness.py) in front of the sandbox."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
from support.app_harness import AppRelay, seed_accounts, start_app_relay, tokens_with
from support.relay_harness import (
    LineClient,
    LoopRelay,
    authorized_token_set,
    fresh_store,
    loopback,
    relay_config,
    sandbox_credentials,
    sandbox_smtp_upstream,
)

from relay.config.model import AccountConfig, LimitsConfig, ListenerConfig, PoolConfig, RelayConfig
from relay.localauth import LocalAuthenticator
from relay.passwords import hash_password
from relay.sandbox.world import SandboxWorld
from relay.smtp.server import SmtpRelayServer
from relay.tokens.manager import TokenManager
from relay.tokens.store import generate_key

PASSWORD = "correct horse"
MAILBOX = "sales@sandbox.test"
USERNAME = "sales-app"

def make_authenticator(config: RelayConfig) -> LocalAuthenticator:
    """The real local authenticator for ``config``."""
    return LocalAuthenticator(config)


def build_config(sandbox: SandboxWorld, tmp_path: Path, *, limits: LimitsConfig | None = None,
                 listener: ListenerConfig | None = None, **account_changes: Any) -> RelayConfig:
    """A RelayConfig with account 'sales' (login sales-app) sending through the sandbox."""
    pw_hash = hash_password(PASSWORD, log2_n=10)
    account = AccountConfig(name="sales", username=USERNAME, password_hash=pw_hash, mailbox=MAILBOX,
                            credentials="sandbox", smtp=sandbox_smtp_upstream(sandbox), pop3=None)
    account = replace(account, **account_changes)
    return relay_config(
        accounts=[account], credentials=sandbox_credentials(sandbox), token_store=tmp_path / "tokens.enc",
        smtp_listener=listener or loopback(), pop3_listener=loopback(enabled=False),
        limits=limits or LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                                      upstream_command_timeout_s=10, upstream_data_timeout_s=10),
    )


@dataclass
class RunningRelay(AppRelay):
    """A RelayApp (SMTP listener only) started from relay.yaml, on its own loop thread."""

    sandbox: SandboxWorld | None = None

    @property
    def port(self) -> int:
        """The relay's SMTP port."""
        return self.smtp_port

    @property
    def server(self) -> SmtpRelayServer:
        """The running SMTP listener (pool, active sessions)."""
        return cast(SmtpRelayServer, self.app.listener("smtp"))

    def smtp(self, login: bool = True, timeout: float = 30) -> smtplib.SMTP:
        """An smtplib client connected (and logged in) to the relay."""
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)
        if login:
            client.login(USERNAME, PASSWORD)
        return client

    def raw(self, timeout: float = 30) -> RawClient:
        """A raw socket client for bad-input tests, greeting already read."""
        return RawClient(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))


class RawClient(LineClient):
    """Line-level SMTP over a plain socket: send bytes, read one (possibly multi-line) reply."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.greeting = self.reply()

    def cmd(self, line: bytes | str) -> str:
        """Send one command line (CRLF added) and return the reply text."""
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def reply(self) -> str:
        """Read one complete reply; '' when the server closed the connection."""
        lines = []
        while True:
            raw = self.line()
            if not raw.endswith(b"\n"):  # EOF: an unterminated rest is not a reply line
                return "\r\n".join(lines)
            text = raw.rstrip(b"\r\n").decode()
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\r\n".join(lines)

    def closed_by_server(self) -> bool:
        """True when the server has closed the connection (reads EOF)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


async def seed_tokens_async(sandbox: SandboxWorld, config: RelayConfig, *, seed: bool = True,
                            retry_attempts: int = 1, obtained_ago_s: float = 3600) -> TokenManager:
    """A TokenManager over a fresh store holding an authorized token set for 'sales' (as after
    `relay authorize`); the token looks old enough that a forced refresh really refreshes."""
    store = fresh_store(config.token_store.path)
    if seed:
        await store.put(authorized_token_set(sandbox.oauth, "sales", MAILBOX, obtained_ago_s=obtained_ago_s))
    return TokenManager(config, store, retry_attempts=retry_attempts, retry_base_delay_s=0.01)


def launch_relay(sandbox: SandboxWorld, config: RelayConfig, directory: Path, *, name: str = "relay-smtp",
                 seed: Mapping[str, str] | None = None, authenticator: Any = None,
                 retry_attempts: int = 1) -> RunningRelay:
    """Start a RelayApp for ``config`` from ``directory``/relay.yaml; ``seed``: account -> mailbox
    authorized before the start (as after `relay authorize`)."""
    key = generate_key()
    seed_accounts(config, key, {account: authorized_token_set(sandbox.oauth, account, mailbox)
                                for account, mailbox in (seed or {}).items()})
    base = start_app_relay(config, directory, key=key, name=name,
                           tokens_factory=tokens_with(retry_attempts=retry_attempts, retry_base_delay_s=0.01),
                           authenticator_factory=(lambda _c: authenticator) if authenticator else None)
    return RunningRelay(base.app, base.thread, base.config_path, sandbox=sandbox)


StartRelay = Callable[..., RunningRelay]


@pytest.fixture
def start_relay(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[StartRelay]:
    """Factory: start a RelayApp from relay.yaml (config changes as keyword arguments) in front of
    the sandbox, with 'sales' authorized (``seed=False``: not authorized)."""
    started: list[RunningRelay] = []

    def start(*, authenticator: Any = None, seed: bool = True, retry_attempts: int = 1,
              upstream_pool: PoolConfig | None = None, **config_changes: Any) -> RunningRelay:
        directory = tmp_path / f"relay{len(started)}"
        directory.mkdir(mode=0o700)
        config = build_config(sandbox, directory, **config_changes)
        if upstream_pool is not None:
            config = replace(config, upstream_pool=upstream_pool)
        relay = launch_relay(sandbox, config, directory, name=f"relay-smtp-{len(started)}",
                             seed={"sales": MAILBOX} if seed else None, authenticator=authenticator,
                             retry_attempts=retry_attempts)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@dataclass
class DirectSmtpRelay(LoopRelay[SmtpRelayServer]):
    """An SmtpRelayServer built directly, without RelayApp: only for tests that plug in a part
    RelayApp does not let a configuration choose (a custom Delivery factory)."""

    def smtp(self, login: bool = True, timeout: float = 30) -> smtplib.SMTP:
        """An smtplib client connected (and logged in) to the relay."""
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)
        if login:
            client.login(USERNAME, PASSWORD)
        return client

"""Fixtures for the POP3 proxy tests: a RelayApp (tests/support/app_harness.py) in front of the sandbox.

The relay uses the real TokenManager over an encrypted store seeded as after `relay authorize`,
so token refresh and forced refresh run the production code path.
"""

from __future__ import annotations

import functools
import poplib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
from support.app_harness import AppRelay, seed_accounts, start_app_relay, tokens_with, wait_until
from support.relay_harness import (
    Pop3Lines,
    authorized_token_set,
    loopback,
    relay_config,
    sandbox_credentials,
    sandbox_pop3_upstream,
)

from relay.config.model import AccountConfig, LimitsConfig, ListenerConfig, RelayConfig, UpstreamEndpoint
from relay.passwords import hash_password
from relay.pop3.server import Pop3ProxyServer
from relay.sandbox.world import SandboxWorld
from relay.tokens.store import generate_key

PASSWORD = "pop3 horse battery"
TIMEOUT_S = 30.0

@functools.cache
def password_hash() -> str:
    """The scrypt hash of PASSWORD at a test cost (2**10 instead of 2**14: every login verifies it),
    computed once (all test accounts share it)."""
    return hash_password(PASSWORD, log2_n=10)


def with_limits(**changes: Any) -> LimitsConfig:
    """Test limits (fast failure delay, bounded upstream timeouts) with ``changes`` applied."""
    base = LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=10,
                        upstream_command_timeout_s=20, upstream_data_timeout_s=20)
    return replace(base, **changes)


def username(i: int) -> str:
    """Local login of account number ``i``."""
    return f"app{i}"


def mailbox(i: int) -> str:
    """Upstream mailbox of account number ``i``."""
    return f"user{i}@sandbox.test"


def build_config(sandbox: SandboxWorld, tmp_path: Path, *, accounts: int = 1,
                 limits: LimitsConfig | None = None, listener: ListenerConfig | None = None,
                 upstream: UpstreamEndpoint | None = None) -> RelayConfig:
    """A RelayConfig with accounts ``acct0..`` (login ``app<i>``) reading from the sandbox POP3."""
    pw_hash = password_hash()
    endpoint = upstream or sandbox_pop3_upstream(sandbox)
    accts = [
        AccountConfig(name=f"acct{i}", username=username(i), password_hash=pw_hash,
                      mailbox=mailbox(i), credentials="sandbox", smtp=None, pop3=endpoint)
        for i in range(accounts)
    ]
    return relay_config(
        accounts=accts, credentials=sandbox_credentials(sandbox), token_store=tmp_path / "tokens.enc",
        smtp_listener=loopback(enabled=False), pop3_listener=listener or loopback(),
        limits=limits or with_limits(),
    )


@dataclass
class RunningPop3Relay(AppRelay):
    """A RelayApp (POP3 listener only) started from relay.yaml, on its own loop thread."""

    sandbox: SandboxWorld | None = None

    @property
    def port(self) -> int:
        """The relay's POP3 port."""
        return self.pop3_port

    @property
    def server(self) -> Pop3ProxyServer:
        """The running POP3 listener."""
        return cast(Pop3ProxyServer, self.app.listener("pop3"))

    def pop(self, i: int = 0, *, login: bool = True) -> poplib.POP3:
        """A poplib client connected to the relay (logged in as account ``i`` by default)."""
        client = poplib.POP3("127.0.0.1", self.port, timeout=TIMEOUT_S)
        if login:
            client.user(username(i))
            client.pass_(PASSWORD)
        return client

    def raw(self) -> RawPop3:
        """A raw socket client, greeting already read."""
        return RawPop3(socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S))

    def wait_unlocked(self, i: int = 0) -> None:
        """Wait until the sandbox released account ``i``'s maildrop (the upstream session ended)."""
        assert self.sandbox is not None
        sandbox = self.sandbox
        wait_until(lambda: not sandbox.pop3.is_locked(mailbox(i)), TIMEOUT_S, "the upstream maildrop lock")


RawPop3 = Pop3Lines  # the suites' name for the shared POP3 transcript client


StartPop3Relay = Callable[..., RunningPop3Relay]


def launch_pop3_relay(sandbox: SandboxWorld, config: RelayConfig, directory: Path, *,
                      expired: bool = False) -> RunningPop3Relay:
    """Start a RelayApp for ``config`` from ``directory``/relay.yaml with every account authorized
    (``expired``: the stored access tokens are past their expiry)."""
    key = generate_key()
    seed_accounts(config, key, {
        account.name: authorized_token_set(sandbox.oauth, account.name, account.mailbox,
                                           expires_in_s=-60 if expired else 3600)
        for account in config.accounts.values()})
    base = start_app_relay(config, directory, key=key, name="pop3-relay",
                           tokens_factory=tokens_with(retry_attempts=2, retry_base_delay_s=0.01))
    return RunningPop3Relay(base.app, base.thread, base.config_path, sandbox=sandbox)


@pytest.fixture
def pop3_relay(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[StartPop3Relay]:
    """A starter: ``pop3_relay(accounts=1, limits=..., listener=..., upstream=..., expired=False)``."""
    started: list[RunningPop3Relay] = []

    def start(*, expired: bool = False, **options: Any) -> RunningPop3Relay:
        directory = tmp_path / f"relay{len(started)}"
        directory.mkdir(mode=0o700)
        relay = launch_pop3_relay(sandbox, build_config(sandbox, directory, **options), directory,
                                  expired=expired)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()

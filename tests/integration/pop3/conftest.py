"""Fixtures for the POP3 proxy tests: the relay on its own loop thread in front of the sandbox.

The relay uses the real TokenManager over an encrypted store seeded as after `relay authorize`,
so token refresh and forced refresh run the production code path.
"""

from __future__ import annotations

import functools
import poplib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from support.relay_harness import (
    LineClient,
    LoopRelay,
    authorized_token_set,
    fresh_store,
    loopback,
    relay_config,
    sandbox_credentials,
    sandbox_pop3_upstream,
)

from relay.config.model import AccountConfig, LimitsConfig, ListenerConfig, RelayConfig, UpstreamEndpoint
from relay.localauth import LocalAuthenticator
from relay.passwords import hash_password
from relay.pop3.server import Pop3ProxyServer
from relay.sandbox.loop import LoopThread
from relay.sandbox.world import SandboxWorld
from relay.tokens.manager import TokenManager

PASSWORD = "pop3 horse battery"
TIMEOUT_S = 30.0

@functools.cache
def password_hash() -> str:
    """The scrypt hash of PASSWORD, computed once (all test accounts share it)."""
    return hash_password(PASSWORD)


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


async def seeded_token_manager(sandbox: SandboxWorld, config: RelayConfig, *,
                               expired: bool = False) -> TokenManager:
    """A TokenManager over a fresh store with authorized tokens for every account (as after
    `relay authorize`); with ``expired`` the stored access tokens are past their expiry."""
    store = fresh_store(config.token_store.path)
    for account in config.accounts.values():
        await store.put(authorized_token_set(sandbox.oauth, account.name, account.mailbox,
                                             expires_in_s=-60 if expired else 3600))
    return TokenManager(config, store, retry_attempts=2, retry_base_delay_s=0.01)


@dataclass
class RunningPop3Relay(LoopRelay[Pop3ProxyServer]):
    """A started Pop3ProxyServer with the real TokenManager, on its own loop thread."""

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
        deadline = time.monotonic() + TIMEOUT_S
        while self.sandbox.pop3.is_locked(mailbox(i)):
            assert time.monotonic() < deadline, "upstream maildrop still locked"
            time.sleep(0.02)


class RawPop3(LineClient):
    """Line-level POP3 over a plain socket, for bad input and exact bytes."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.greeting = self.line()

    def cmd(self, line: bytes) -> bytes:
        """Send one command line (CRLF added), return the status line."""
        self.send(line + b"\r\n")
        return self.line()

    def until_terminator(self) -> bytes:
        """Read a multi-line body up to and including the terminating '.' line."""
        out = bytearray()
        while not out.endswith(b"\r\n.\r\n") and out != b".\r\n":
            line = self.line()
            if not line:
                raise ConnectionError("closed before the terminating line")
            out += line
        return bytes(out)

    def closed_by_server(self) -> bool:
        """True when the server closed the connection (EOF or reset) with nothing left unread."""
        try:
            return self.buffer == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


StartPop3Relay = Callable[..., RunningPop3Relay]


@pytest.fixture
def pop3_relay(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[StartPop3Relay]:
    """A starter: ``pop3_relay(accounts=1, limits=..., listener=..., upstream=..., expired=False)``."""
    started: list[RunningPop3Relay] = []

    def start(*, expired: bool = False, **options: Any) -> RunningPop3Relay:
        config = build_config(sandbox, tmp_path, **options)
        thread = LoopThread("pop3-relay").start()
        tokens = thread.run(seeded_token_manager(sandbox, config, expired=expired))
        server = Pop3ProxyServer(config, tokens, LocalAuthenticator(config))
        thread.run(server.start())
        relay = RunningPop3Relay(config, sandbox, server, tokens, thread)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()



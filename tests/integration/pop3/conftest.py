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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    LimitsConfig,
    ListenConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.localauth import LocalAuthenticator
from relay.passwords import hash_password
from relay.pop3.server import Pop3ProxyServer
from relay.sandbox.loop import LoopThread
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_SCOPE
from relay.sandbox.world import SandboxWorld
from relay.secret import Secret
from relay.tokens.manager import TokenManager
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

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
    endpoint = upstream or UpstreamEndpoint(sandbox.host, sandbox.pop3_port, "implicit",
                                            ca_file=sandbox.ca_file)
    accts = {
        f"acct{i}": AccountConfig(name=f"acct{i}", username=username(i), password_hash=pw_hash,
                                  mailbox=mailbox(i), credentials="sandbox", smtp=None, pop3=endpoint)
        for i in range(accounts)
    }
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=DEFAULT_CLIENT_ID,
                              scopes=tuple(DEFAULT_SCOPE.split()), token_url=sandbox.oauth.token_url,
                              authorize_url=sandbox.oauth.authorize_url)
    return RelayConfig(
        listen=ListenConfig(smtp=ListenerConfig(False, "127.0.0.1", 0),
                            pop3=listener or ListenerConfig(True, "127.0.0.1", 0)),
        token_store=TokenStoreConfig(path=tmp_path / "tokens.enc"),
        credentials={"sandbox": creds},
        accounts=accts,
        limits=limits or with_limits(),
    )


async def seeded_token_manager(sandbox: SandboxWorld, config: RelayConfig, *,
                               expired: bool = False) -> TokenManager:
    """A TokenManager over a fresh store with authorized tokens for every account (as after
    `relay authorize`); with ``expired`` the stored access tokens are past their expiry."""
    store = EncryptedFileStore(config.token_store.path, decode_key(generate_key(), "test"))
    now = datetime.now(UTC)
    expires_at = now - timedelta(minutes=1) if expired else now + timedelta(hours=1)
    for account in config.accounts.values():
        await store.put(TokenSet(
            account=account.name, credentials="sandbox",
            access_token=Secret(sandbox.oauth.issue_access_token(account.mailbox)),
            expires_at=expires_at,
            refresh_token=Secret(sandbox.oauth.issue_refresh_token(account.mailbox)),
            scopes=tuple(DEFAULT_SCOPE.split()), obtained_at=now - timedelta(hours=1)))
    return TokenManager(config, store, retry_attempts=2, retry_base_delay_s=0.01)


@dataclass
class RunningPop3Relay:
    """A started Pop3ProxyServer with the real TokenManager, on its own loop thread."""

    config: RelayConfig
    sandbox: SandboxWorld
    server: Pop3ProxyServer
    tokens: TokenManager
    thread: LoopThread
    stopped: bool = field(default=False)

    @property
    def port(self) -> int:
        """The relay's bound port."""
        return self.server.port

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

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server and the token manager, then the loop thread."""
        if not self.stopped:
            self.stopped = True
            self.thread.run(self.server.stop(grace_s), timeout_s=grace_s + 20)
            self.thread.run(self.tokens.close())
            self.thread.stop()


class RawPop3:
    """Line-level POP3 over a plain socket, for bad input and exact bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def line(self) -> bytes:
        """Read one line including CRLF; b'' when the server closed the connection."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

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

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


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



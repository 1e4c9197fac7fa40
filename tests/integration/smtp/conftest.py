"""Fixtures for the SMTP relay tests: a relay in its own loop thread in front of the sandbox."""

from __future__ import annotations

import smtplib
import socket
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
from relay.sandbox.loop import LoopThread
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_SCOPE
from relay.sandbox.world import SandboxWorld
from relay.secret import Secret
from relay.smtp.server import SmtpRelayServer
from relay.tokens.manager import TokenManager
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

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
    endpoint = UpstreamEndpoint(sandbox.host, sandbox.smtp_port, "starttls", ca_file=sandbox.ca_file)
    account = AccountConfig(name="sales", username=USERNAME, password_hash=pw_hash, mailbox=MAILBOX,
                            credentials="sandbox", smtp=endpoint, pop3=None)
    account = replace(account, **account_changes)
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=DEFAULT_CLIENT_ID,
                              scopes=tuple(DEFAULT_SCOPE.split()), token_url=sandbox.oauth.token_url,
                              authorize_url=sandbox.oauth.authorize_url)
    return RelayConfig(
        listen=ListenConfig(smtp=listener or ListenerConfig(True, "127.0.0.1", 0),
                            pop3=ListenerConfig(False, "127.0.0.1", 0)),
        token_store=TokenStoreConfig(path=tmp_path / "tokens.enc"),
        credentials={"sandbox": creds},
        accounts={"sales": account},
        limits=limits or LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                                      upstream_command_timeout_s=10, upstream_data_timeout_s=10),
    )


@dataclass
class RunningRelay:
    """A started SmtpRelayServer with the real TokenManager, on its own loop thread."""

    config: RelayConfig
    sandbox: SandboxWorld
    server: SmtpRelayServer
    tokens: TokenManager
    thread: LoopThread
    stopped: bool = field(default=False)

    @property
    def port(self) -> int:
        """The relay's bound port."""
        return self.server.port

    def smtp(self, login: bool = True, timeout: float = 30) -> smtplib.SMTP:
        """An smtplib client connected (and logged in) to the relay."""
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)
        if login:
            client.login(USERNAME, PASSWORD)
        return client

    def raw(self, timeout: float = 30) -> RawClient:
        """A raw socket client for bad-input tests, greeting already read."""
        return RawClient(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server and the token manager, then the loop thread."""
        if not self.stopped:
            self.stopped = True
            self.thread.run(self.server.stop(grace_s), timeout_s=grace_s + 20)
            self.thread.run(self.tokens.close())
            self.thread.stop()


class RawClient:
    """Line-level SMTP over a plain socket: send bytes, read one (possibly multi-line) reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

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
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\r\n".join(lines)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.rstrip(b"\r").decode()
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\r\n".join(lines)

    def closed_by_server(self) -> bool:
        """True when the server has closed the connection (reads EOF)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


async def seed_tokens_async(sandbox: SandboxWorld, config: RelayConfig, *, seed: bool = True,
                            retry_attempts: int = 1, obtained_ago_s: float = 3600) -> TokenManager:
    """A TokenManager over a fresh store holding an authorized token set for 'sales' (as after
    `relay authorize`); the token looks old enough that a forced refresh really refreshes."""
    store = EncryptedFileStore(config.token_store.path, decode_key(generate_key(), "test"))
    if seed:
        now = datetime.now(UTC)
        await store.put(TokenSet(
            account="sales", credentials="sandbox",
            access_token=Secret(sandbox.oauth.issue_access_token(MAILBOX)),
            expires_at=now + timedelta(hours=1),
            refresh_token=Secret(sandbox.oauth.issue_refresh_token(MAILBOX)),
            scopes=tuple(DEFAULT_SCOPE.split()), obtained_at=now - timedelta(seconds=obtained_ago_s)))
    return TokenManager(config, store, retry_attempts=retry_attempts, retry_base_delay_s=0.01)


StartRelay = Callable[..., RunningRelay]


@pytest.fixture
def start_relay(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[StartRelay]:
    """Factory: start a relay (config changes as keyword arguments) in front of the sandbox."""
    started: list[RunningRelay] = []

    def start(*, authenticator: Any = None, seed: bool = True, retry_attempts: int = 1,
              **config_changes: Any) -> RunningRelay:
        config = build_config(sandbox, tmp_path / f"relay{len(started)}", **config_changes)
        thread = LoopThread(f"relay-smtp-{len(started)}").start()

        async def make() -> tuple[SmtpRelayServer, TokenManager]:
            tokens = await seed_tokens_async(sandbox, config, seed=seed, retry_attempts=retry_attempts)
            server = SmtpRelayServer(config, tokens, authenticator or make_authenticator(config),
                                     hostname="relay.test")
            await server.start()
            return server, tokens

        server, tokens = thread.run(make())
        relay = RunningRelay(config, sandbox, server, tokens, thread)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()

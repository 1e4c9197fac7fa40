"""Fixtures for the reliability and security tests: one relay (SMTP + POP3) in front of the sandbox.

The relay is a RelayApp started from relay.yaml (tests/support/app_harness.py), over an encrypted
store seeded as after `relay authorize`, on its own loop thread. Helpers here are shared
by the live tests; the fuzz tests need none of them.
"""

from __future__ import annotations

import functools
import poplib
import smtplib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
from support.app_harness import AppRelay, start_app_relay, tokens_with
from support.relay_harness import (
    LineClient,
    authorized_token_set,
    loopback,
    relay_config,
    sandbox_credentials,
    sandbox_pop3_upstream,
    sandbox_smtp_upstream,
)

from relay.app import TokensFactory
from relay.config.model import AccountConfig, LimitsConfig, ListenerConfig, RelayConfig, UpstreamEndpoint
from relay.localauth import LocalAuthenticator
from relay.passwords import hash_password
from relay.pop3.server import Pop3ProxyServer
from relay.sandbox.world import SandboxWorld
from relay.smtp.server import SmtpRelayServer
from relay.tokens.interface import TokenStore
from relay.tokens.manager import TokenManager, new_http_client
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

USERNAME = "rel-app"
PASSWORD = "rel pass phrase 42"
MAILBOX = "rel@sandbox.test"
TIMEOUT_S = 30.0


def make_authenticator(config: RelayConfig) -> LocalAuthenticator:
    """The real local authenticator for ``config``."""
    return LocalAuthenticator(config)


def fast_limits(**changes: Any) -> LimitsConfig:
    """Limits for tests: short failure delay and bounded upstream timeouts, with ``changes``."""
    base = LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                        upstream_command_timeout_s=10, upstream_data_timeout_s=10)
    return replace(base, **changes)


@functools.cache
def _password_hash() -> str:
    """PASSWORD's scrypt hash at a test cost (2**10; the default 2**14 costs ~0.1 s per login, which
    the many-login tests pay hundreds of times); the verification code is the same."""
    return hash_password(PASSWORD, log2_n=10)


def build_config(sandbox: SandboxWorld, store_path: Path, *, limits: LimitsConfig | None = None,
                 smtp: UpstreamEndpoint | None = None, pop3: UpstreamEndpoint | None = None,
                 smtp_listener: ListenerConfig | None = None,
                 pop3_listener: ListenerConfig | None = None) -> RelayConfig:
    """One account ``rel`` (login rel-app) sending and reading through the sandbox."""
    pw_hash = _password_hash()
    smtp = smtp or sandbox_smtp_upstream(sandbox)
    pop3 = pop3 or sandbox_pop3_upstream(sandbox)
    account = AccountConfig(name="rel", username=USERNAME, password_hash=pw_hash, mailbox=MAILBOX,
                            credentials="sandbox", smtp=smtp, pop3=pop3)
    return relay_config(
        accounts=[account], credentials=sandbox_credentials(sandbox, with_secret=True),
        token_store=store_path, smtp_listener=smtp_listener or loopback(),
        pop3_listener=pop3_listener or loopback(), limits=limits or fast_limits(),
    )


def seed_store(sandbox: SandboxWorld, path: Path, key: bytes, *, expired: bool = False,
               access_lifetime_s: float | None = None) -> TokenSet:
    """Write an authorized token set for ``rel`` (as `relay authorize` would) and return it."""
    store = EncryptedFileStore(path, key)
    lifetime = -60 if expired else (access_lifetime_s or 3600)
    tokens = authorized_token_set(sandbox.oauth, "rel", MAILBOX, expires_in_s=lifetime)
    store._modify("rel", tokens)
    return tokens


@dataclass
class Relay(AppRelay):
    """A RelayApp (SMTP + POP3) started from relay.yaml, on its own loop thread."""

    sandbox: SandboxWorld | None = None
    key: bytes = b""
    own_store: Any = None  # a store the test opened itself (store_options); closed after the relay

    @property
    def smtp_server(self) -> SmtpRelayServer:
        """The running SMTP listener."""
        return cast(SmtpRelayServer, self.app.listener("smtp"))

    @property
    def pop3_server(self) -> Pop3ProxyServer:
        """The running POP3 listener."""
        return cast(Pop3ProxyServer, self.app.listener("pop3"))

    def smtp(self, *, login: bool = True) -> smtplib.SMTP:
        """An smtplib client (logged in by default)."""
        client = smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=TIMEOUT_S)
        if login:
            client.login(USERNAME, PASSWORD)
        return client

    def mail_code(self, message: bytes = b"Subject: t\r\n\r\nbody\r\n") -> int:
        """Send ``message`` in one logged-in session: the code of the MAIL reply if it refused,
        else of the end of DATA."""
        with self.smtp() as client:
            code, _ = client.mail("from@x.test")
            if code == 250:
                client.rcpt("to@x.test")
                code, _ = client.data(message)
        return code

    def pop(self, *, login: bool = True) -> poplib.POP3:
        """A poplib client (logged in by default)."""
        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=TIMEOUT_S)
        if login:
            client.user(USERNAME)
            client.pass_(PASSWORD)
        return client

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop the relay (and a store the test opened), then the loop thread."""
        if self.stopped:
            return
        if self.own_store is not None:
            self.run(self.app.stop(grace_s), timeout_s=grace_s + 20)
            self.run(self.own_store.close())
        super().stop(grace_s)


StartRelay = Callable[..., Relay]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxWorld]:
    """A started SandboxWorld (OAuth provider, SMTP with STARTTLS, POP3 with TLS); stopped afterwards."""
    with SandboxWorld.start(tmp_path / "sandbox") as world:
        yield world


@pytest.fixture
def rel_relay(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[StartRelay]:
    """Factory: a RelayApp from relay.yaml: ``rel_relay(limits=..., smtp=..., pop3=..., seed=True,
    expired=False, retry_attempts=1, store_options={...})`` (keyword arguments of
    EncryptedFileStore, e.g. a slow ``fsync``); ``prepare_tokens(manager)`` runs before RelayApp
    starts the TokenManager's background refresher."""
    started: list[Relay] = []

    def start(*, seed: bool = True, expired: bool = False, retry_attempts: int = 1,
              retry_base_delay_s: float = 0.01, authenticator: Any = None, http_timeout_s: float = 20.0,
              check_interval_s: float | None = None, store_options: dict[str, Any] | None = None,
              prepare_tokens: Callable[[TokenManager], None] | None = None, **options: Any) -> Relay:
        store_dir = tmp_path / f"relay{len(started)}"
        store_dir.mkdir(mode=0o700)
        config = build_config(sandbox, store_dir / "tokens.enc", **options)
        key_text = generate_key()
        key = decode_key(key_text, "test")
        if seed:
            seed_store(sandbox, config.token_store.path, key, expired=expired)
        store = None  # None: RelayApp opens the configured store, as `relay serve` does
        if store_options:
            store = EncryptedFileStore(config.token_store.path, key, **store_options).open()
        tokens = tokens_with(retry_attempts=retry_attempts, retry_base_delay_s=retry_base_delay_s,
                             http=new_http_client(http_timeout_s), check_interval_s=check_interval_s or 30.0)
        if prepare_tokens is not None:
            tokens = _prepared(tokens, prepare_tokens)
        base = start_app_relay(config, store_dir, key=key_text, name=f"rel-relay-{len(started)}", store=store,
                               tokens_factory=tokens,
                               authenticator_factory=(lambda _c: authenticator) if authenticator else None)
        relay = Relay(base.app, base.thread, base.config_path, sandbox=sandbox, key=key, own_store=store)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def _prepared(factory: TokensFactory, prepare: Callable[[TokenManager], None]) -> TokensFactory:
    """A tokens_factory that lets the test patch the TokenManager before RelayApp starts it."""
    def make(config: RelayConfig, store: TokenStore) -> TokenManager:
        tokens = factory(config, store)
        prepare(tokens)
        return tokens
    return make


class Raw(LineClient):
    """A line-level client over a plain socket (SMTP or POP3), for exact bytes and bad input.

    A connection reset while reading counts as EOF.
    """

    eof_on_reset = True

    def __init__(self, port: int, timeout_s: float = TIMEOUT_S) -> None:
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=timeout_s))

    def smtp_reply(self) -> str:
        """Read one (possibly multi-line) SMTP reply as text; '' on EOF."""
        lines = []
        while True:
            raw = self.line()
            if not raw:
                return "\r\n".join(lines)
            text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\r\n".join(lines)

    def smtp(self, line: bytes | str) -> str:
        """Send an SMTP command line (CRLF added) and return the reply."""
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.smtp_reply()

    def closed_by_peer(self) -> bool:
        """True when the peer closed (EOF or reset) and nothing is left unread."""
        try:
            return self.buffer == b"" and self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

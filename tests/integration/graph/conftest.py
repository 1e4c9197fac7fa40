"""Fixtures for the Graph upstream tests: the real RelayApp (YAML config, token store, SMTP and
POP3 listeners) in front of the sandbox's fake Microsoft Graph, on its own loop thread."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.app_harness import started_app_with_token

from relay.app import RelayApp
from relay.config.model import RelayConfig
from relay.configuration import parse_config
from relay.passwords import hash_password
from relay.sandbox.loop import LoopThread
from relay.sandbox.world import SandboxWorld
from relay.tokens.manager import TokenManager

PASSWORD = "correct horse"
MAILBOX = "sales@sandbox.test"
USERNAME = "sales-app"
PASSWORD_HASH = hash_password(PASSWORD, log2_n=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxWorld]:
    """One sandbox (OAuth provider, fake Graph ...) per test module."""
    with SandboxWorld.start(tmp_path_factory.mktemp("graph-world")) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def clean_graph(world: SandboxWorld) -> Iterator[None]:
    """Each test starts with no faults, empty mailboxes and an empty request log."""
    graph = world.graph
    graph.clear_faults()
    graph.max_request_bytes = 4_000_000
    graph.send_as.clear()
    with graph.mailboxes.lock:
        graph.mailboxes.folders.clear()
        graph.mailboxes.sent.clear()
    with graph.lock:
        graph.requests.clear()
    world.oauth.clear_faults()
    yield


@dataclass
class GraphRelay:
    """A started RelayApp whose account 'sales' sends and reads through the fake Graph."""

    app: RelayApp
    thread: LoopThread
    config: RelayConfig

    @property
    def tokens(self) -> TokenManager:
        """The running token manager."""
        current = self.app._current
        assert current is not None
        return current.tokens

    def smtp(self, timeout: float = 30) -> smtplib.SMTP:
        """An smtplib client logged in to the relay."""
        assert self.app.smtp_port is not None
        client = smtplib.SMTP("127.0.0.1", self.app.smtp_port, timeout=timeout)
        client.login(USERNAME, PASSWORD)
        return client

    @property
    def pop3_port(self) -> int:
        """The relay's POP3 port."""
        assert self.app.pop3_port is not None
        return self.app.pop3_port

    def stop(self) -> None:
        """Stop the app and its loop thread."""
        self.thread.run(self.app.stop(2.0), timeout_s=30)
        self.thread.stop()


StartGraphRelay = Callable[..., GraphRelay]


def graph_yaml(world: SandboxWorld, tmp_path: Path, *, credentials: dict[str, Any] | None = None,
               **graph: Any) -> dict[str, Any]:
    """The YAML (as parsed) of a relay with one Graph account at the sandbox."""
    creds = world.credentials_yaml("sandbox")
    creds["sandbox"].update(credentials or {})
    return {
        "listen": {"smtp": {"port": 0}, "pop3": {"port": 0}},
        "token_store": {"path": str(tmp_path / "tokens.enc"), "key_env": "RELAY_TEST_STORE_KEY"},
        "credentials": creds,
        "accounts": {"sales": world.graph_account_yaml(USERNAME, PASSWORD_HASH, MAILBOX, **graph)},
        "limits": {"auth_failure_delay_s": 0.05, "upstream_connect_timeout_s": 5},
    }


@pytest.fixture
def start_graph_relay(world: SandboxWorld, tmp_path: Path) -> Iterator[StartGraphRelay]:
    """Start the relay from ``graph_yaml`` (keyword arguments go to it); stopped afterwards."""
    started: list[GraphRelay] = []

    def start(**options: Any) -> GraphRelay:
        config = parse_config(graph_yaml(world, tmp_path, **options), env={"RELAY_TEST_STORE_KEY": "x"})
        thread = LoopThread("relay-graph").start()
        app = thread.run(started_app_with_token(config, tmp_path / "tokens.enc", world.oauth, "sales",
                                                MAILBOX))
        relay = GraphRelay(app, thread, config)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()

"""Fixtures for the spool tests: a RelayApp (tests/support/app_harness.py) with ``delivery: spool``
accounts in front of the sandbox, on its own loop thread, its spool on a clock the test moves
(`relay.spool.clock.ManualClock`)."""

from __future__ import annotations

import smtplib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.app_harness import AppRelay, seed_accounts, start_app_relay, tokens_with, wait_until
from support.relay_harness import (
    authorized_token_set,
    loopback,
    relay_config,
    sandbox_credentials,
    sandbox_smtp_upstream,
)

from relay.config.model import AccountConfig, LimitsConfig, RelayConfig, SpoolConfig
from relay.passwords import hash_password
from relay.sandbox.world import SandboxWorld
from relay.spool.clock import ManualClock
from relay.spool.service import SpoolService
from relay.tokens.store import generate_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))

from ops_helpers import OpsSetup, free_port
from support.serve import ServeProcess

PASSWORD = "spool test pw"
ACCOUNTS = {"sales": "sales@sandbox.test", "ops": "ops@sandbox.test"}


def spool_config(sandbox: SandboxWorld, directory: Path, spool: SpoolConfig) -> RelayConfig:
    """Accounts 'sales' and 'ops' (logins sales-app / ops-app), both spooling."""
    pw_hash = hash_password(PASSWORD, log2_n=10)
    accounts = [AccountConfig(name=name, username=f"{name}-app", password_hash=pw_hash, mailbox=mailbox,
                              credentials="sandbox", smtp=sandbox_smtp_upstream(sandbox), pop3=None,
                              delivery="spool") for name, mailbox in ACCOUNTS.items()]
    config = relay_config(accounts=accounts, credentials=sandbox_credentials(sandbox),
                          token_store=directory / "tokens.enc", smtp_listener=loopback(),
                          pop3_listener=loopback(enabled=False),
                          limits=LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                                              upstream_command_timeout_s=10, upstream_data_timeout_s=10))
    return replace(config, spool=replace(spool, directory=spool.directory or directory / "spool"))


@dataclass
class SpoolRelay(AppRelay):
    """A running RelayApp whose accounts spool; ``clock`` moves only when the test says so."""

    sandbox: SandboxWorld | None = None
    clock: ManualClock = field(default_factory=ManualClock)

    @property
    def service(self) -> SpoolService:
        """The app's spool."""
        assert self.app.spool is not None, "no account spools in this relay"
        return self.app.spool

    @property
    def store_dir(self) -> Path:
        """The spool directory."""
        return self.config.spool_directory()

    def smtp(self, account: str = "sales") -> smtplib.SMTP:
        """A logged-in smtplib client."""
        client = smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30)
        client.login(f"{account}-app", PASSWORD)
        return client

    def advance(self, seconds: float) -> None:
        """Move the spool's clock (on its loop thread) and wake the worker."""
        self.thread.call_soon(self.clock.advance, seconds)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the relay's loop thread and return its result."""
        async def run() -> Any:
            return fn()
        return self.thread.run(run())

    def wait_backing_off(self, account: str = "sales") -> None:
        """Wait until the account's first attempt failed (the upstream is down) and it backs off."""
        worker = self.service.worker
        wait_until(lambda: self.call(lambda: worker.backoff_until(account)) > self.clock.now(),
                   what=f"account {account} to back off")

    def queued(self) -> int:
        """Messages in the spool."""
        return len(list((self.store_dir / "queue").glob("*.msg")))


StartSpoolRelay = Callable[..., SpoolRelay]


def launch_spool_relay(sandbox: SandboxWorld, config: RelayConfig, directory: Path,
                       name: str = "relay-spool") -> SpoolRelay:
    """Start a RelayApp for ``config`` from ``directory``/relay.yaml, every account authorized, its
    spool on a ManualClock."""
    key = generate_key()
    seed_accounts(config, key, {name: authorized_token_set(sandbox.oauth, name, account.mailbox)
                                for name, account in config.accounts.items()})
    clock = ManualClock()
    base = start_app_relay(config, directory, key=key, name=name, spool_clock=clock,
                           tokens_factory=tokens_with(retry_attempts=1, retry_base_delay_s=0.01))
    return SpoolRelay(base.app, base.thread, base.config_path, sandbox=sandbox, clock=clock)


@pytest.fixture
def start_spool_relay(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[StartSpoolRelay]:
    """Factory: start a spooling relay; keyword arguments are SpoolConfig fields."""
    started: list[SpoolRelay] = []

    def start(*, directory: Path | None = None, **spool: Any) -> SpoolRelay:
        base = tmp_path / "relay"
        base.mkdir(exist_ok=True, mode=0o700)
        defaults: dict[str, Any] = {"retry_initial_s": 60.0, "max_messages_per_minute": 100_000}
        config = spool_config(sandbox, base, SpoolConfig(directory=directory, **{**defaults, **spool}))
        relay = launch_spool_relay(sandbox, config, base, f"relay-spool-{len(started)}")
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def spool_ops(sandbox: SandboxWorld, tmp_path: Path, request: pytest.FixtureRequest) -> OpsSetup:
    """A relay.yaml whose account 'ops' spools into tmp_path/ops/spool (spool.retry_initial_s 1,
    or the fixture's indirect parameter)."""

    setup = OpsSetup.fresh(sandbox, tmp_path / "ops")
    setup.accounts["ops"]["delivery"] = "spool"
    setup.seed("ops", "ops@sandbox.test")
    path = setup.write()
    data = yaml.safe_load(path.read_text())
    retry_s = getattr(request, "param", 1)
    data["spool"] = {"directory": str(setup.dir / "spool"), "retry_initial_s": retry_s}
    data["admin"] = {"host": "127.0.0.1", "port": free_port()}
    path.write_text(yaml.safe_dump(data))
    return setup


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Factory: start `relay serve` for a config; killed at teardown if still running."""
    started: list[ServeProcess] = []

    def start(config_path: Path) -> ServeProcess:
        proc = ServeProcess(config_path, tmp_path / f"serve{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()

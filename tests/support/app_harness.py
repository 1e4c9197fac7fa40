"""The relay test harness: a real RelayApp started from a relay.yaml, in front of the sandbox.

Every suite that needs a running relay goes through here, so the wiring `relay serve` uses
(store opening, TokenManager, LocalAuthenticator, listeners, metrics, admin) is what the tests
exercise. The suites still describe their relay as a RelayConfig (dataclasses are easy to vary per
test); ``write_config_yaml`` turns it into the YAML an operator would write (only the settings
that differ from the defaults, secrets as plain values, the store key in a 0600 key file), and the
relay is started from that file through ``relay.configuration.load_config``. The harness checks
that the loaded configuration equals the one the suite described, so a loader or model drift fails
loudly instead of silently testing something else.

Three seams exist for tests only, all RelayApp keyword arguments: ``tokens_factory`` (retry timing,
an HTTP client with a short timeout, a slow-fsync store), ``authenticator_factory`` (a wrapper
that refuses or counts logins) and ``spool_clock`` (a clock the spool tests move). None bypasses
the wiring: RelayApp still builds, starts and stops everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from relay.app import AuthenticatorFactory, RelayApp, TokensFactory
from relay.config.model import AccountConfig, LimitsConfig, PoolConfig, RelayConfig, SpoolConfig
from relay.configuration import load_config
from relay.sandbox.loop import LoopThread
from relay.sandbox.oauth import SandboxOAuthProvider
from relay.secret import Secret
from relay.spool.clock import Clock
from relay.tokens.interface import TokenStore
from relay.tokens.manager import TokenManager
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key
from support.relay_harness import authorized_token_set, fresh_store

# ---- RelayConfig -> the YAML an operator writes -------------------------------------------------

WRITTEN = "_written"
"""AccountConfig keeps the endpoint settings as written (``smtp_written`` for the YAML key ``smtp``)
beside the resolved endpoint (``smtp``); the harness writes and compares the resolved ones."""


def _plain(value: object) -> object:
    """A YAML-safe value: paths and networks as text, secrets revealed, tuples as lists."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _section(value)
    return value


def _default_of(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _section(obj: object, *, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """The settings of one dataclass section that differ from their defaults (always: required ones)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.name in skip or f.name.endswith(WRITTEN):
            continue
        value = getattr(obj, f.name)
        if value == _default_of(f):
            continue
        out[f.name] = _plain(value)
    return out


def config_yaml(config: RelayConfig) -> dict[str, object]:
    """The YAML document (as data) for ``config``: what an operator would put in relay.yaml."""
    listen = {name: _section(getattr(config.listen, name)) for name in ("smtp", "pop3", "imap")
              if getattr(config.listen, name).enabled or name != "imap"}
    for name, section in listen.items():
        section["enabled"] = getattr(config.listen, name).enabled
    data: dict[str, object] = {
        "listen": listen,
        "token_store": _section(config.token_store),
        "credentials": {name: _section(c, skip=("name",)) for name, c in config.credentials.items()},
        "accounts": {name: _account(a) for name, a in config.accounts.items()},
    }
    if config.token_store.key_env is None:
        data["token_store"]["key_env"] = None  # type: ignore[index]
    for name, value, default in (("limits", config.limits, LimitsConfig()),
                                 ("upstream_pool", config.upstream_pool, PoolConfig()),
                                 ("spool", config.spool, SpoolConfig())):
        if value != default:
            data[name] = _section(value)
    for name in ("admin", "alerts"):
        if getattr(config, name) is not None:
            data[name] = _section(getattr(config, name))
    return data


def _account(account: AccountConfig) -> dict[str, object]:
    out = _section(account, skip=("name",))
    out.setdefault("password_hash", None)
    for service in ("smtp", "pop3"):  # false: "this account does not send / read mail"
        if getattr(account, service) is None:
            out[service] = False
    return out


def write_config_yaml(config: RelayConfig, path: Path) -> Path:
    """Write ``config`` as relay.yaml (mode 0600: it holds the client secret) and return the path."""
    path.write_text("# written by tests/support/app_harness.py\n"
                    + yaml.safe_dump(config_yaml(config), sort_keys=False))
    path.chmod(0o600)
    return path


def with_key_file(config: RelayConfig, key: str) -> RelayConfig:
    """``config`` with the store key in a 0600 file next to the store (how `relay init-key` leaves it)."""
    key_file = config.token_store.path.parent / "store.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    store = dataclasses.replace(config.token_store, key_env=None, key_file=key_file)
    return dataclasses.replace(config, token_store=store)


def load_written(config: RelayConfig, path: Path) -> RelayConfig:
    """Write ``config`` to ``path``, load it with the real loader; fail when the two differ."""
    write_config_yaml(config, path)
    loaded = load_config(path, env={})
    described = dataclasses.replace(config, source_path=loaded.source_path)
    differences = list(_differences(described, loaded, "config"))
    if differences:
        raise AssertionError("relay.yaml written from the test's RelayConfig loads differently:\n"
                             + "\n".join(differences))
    return loaded


def _differences(want: object, got: object, path: str) -> Iterator[str]:
    """Paths where two configurations differ (dataclass fields and mapping keys walked)."""
    if dataclasses.is_dataclass(want) and type(want) is type(got):
        for f in dataclasses.fields(want):
            if f.name.endswith(WRITTEN):
                continue
            yield from _differences(getattr(want, f.name), getattr(got, f.name), f"{path}.{f.name}")
    elif isinstance(want, Mapping) and isinstance(got, Mapping):
        for key in sorted(set(want) | set(got), key=str):
            yield from _differences(want.get(key), got.get(key), f"{path}.{key}")
    elif want != got:
        yield f"{path}: described {want!r}, loaded {got!r}"


# ---- the running relay --------------------------------------------------------------------------


@dataclass
class AppRelay:
    """A RelayApp started from a relay.yaml, on its own loop thread (sync tests talk to it with
    smtplib/poplib/imaplib/raw sockets while its loop serves)."""

    app: RelayApp
    thread: LoopThread
    config_path: Path
    stopped: bool = field(default=False)

    @property
    def config(self) -> RelayConfig:
        """The running configuration (as loaded from ``config_path``)."""
        return self.app.config

    @property
    def tokens(self) -> TokenManager:
        """The running token manager."""
        return self.app.tokens

    @property
    def smtp_port(self) -> int:
        """The SMTP listener's port."""
        return self._port(self.app.smtp_port, "smtp")

    @property
    def pop3_port(self) -> int:
        """The POP3 listener's port."""
        return self._port(self.app.pop3_port, "pop3")

    @property
    def imap_port(self) -> int:
        """The IMAP listener's port."""
        return self._port(self.app.imap_port, "imap")

    @staticmethod
    def _port(port: int | None, name: str) -> int:
        assert port is not None, f"listen.{name} is not enabled in this relay's configuration"
        return port

    def server(self, name: str) -> Any:
        """The running listener object ("smtp", "pop3", "imap"), for tests that inspect its state."""
        return self.app.listener(name)

    def active_sessions(self) -> int:
        """Client sessions still running on the relay's listeners."""
        return sum(state.active_sessions for state in self.app.listener_states())

    def run(self, coro: Any, timeout_s: float = 30) -> Any:
        """Run a coroutine on the relay's loop and return its result."""
        return self.thread.run(coro, timeout_s=timeout_s)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the relay (sessions get ``grace_s``), then its loop thread; once."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.thread.run(self.app.stop(grace_s), timeout_s=grace_s + 20)
        finally:
            self.thread.stop()


def write_relay_yaml(config: RelayConfig, directory: Path, key: str) -> Path:
    """Write ``config`` as ``directory``/relay.yaml with the store key in a key file, as an operator
    leaves it for `relay serve -c` (checked by loading it back); return the path."""
    path = directory / "relay.yaml"
    load_written(with_key_file(config, key), path)
    return path


def app_from_yaml(config: RelayConfig, directory: Path, *, key: str, store: TokenStore | None = None,
                  tokens_factory: TokensFactory | None = None,
                  authenticator_factory: AuthenticatorFactory | None = None,
                  spool_clock: Clock | None = None) -> RelayApp:
    """A RelayApp (not started) from ``config`` written as ``directory``/relay.yaml and loaded back;
    for tests that run the relay in their own event loop (``await app.start()`` ... ``app.stop()``)."""
    loaded = load_written(with_key_file(config, key), directory / "relay.yaml")
    return RelayApp(loaded, store=store, loader=_loader, tokens_factory=tokens_factory,
                    authenticator_factory=authenticator_factory, spool_clock=spool_clock)


def seed_accounts(config: RelayConfig, key: str, tokens: Mapping[str, TokenSet]) -> None:
    """Store token sets (account -> TokenSet) in ``config``'s file store, as `relay authorize` does."""
    store = EncryptedFileStore(config.token_store.path, decode_key(key, "test"))

    async def put_all() -> None:
        for token_set in tokens.values():
            await store.put(token_set)

    asyncio.run(put_all())


def start_app_relay(config: RelayConfig, directory: Path, *, key: str, name: str = "relay",
                    store: TokenStore | None = None, tokens_factory: TokensFactory | None = None,
                    authenticator_factory: AuthenticatorFactory | None = None,
                    spool_clock: Clock | None = None) -> AppRelay:
    """Write ``config`` as ``directory``/relay.yaml (store key in a key file), load it with the real
    loader and start a RelayApp from it on a new loop thread. ``store``: an already open store
    (else RelayApp opens the configured one, as `relay serve` does); ``spool_clock``: the clock of
    the spool (a ManualClock the test moves)."""
    app = app_from_yaml(config, directory, key=key, store=store, tokens_factory=tokens_factory,
                        authenticator_factory=authenticator_factory, spool_clock=spool_clock)
    thread = LoopThread(f"{name}-loop").start()
    try:
        thread.run(app.start(), timeout_s=60)
    except BaseException:
        thread.stop()
        raise
    return AppRelay(app, thread, directory / "relay.yaml")


async def started_app_with_token(config: RelayConfig, store_path: Path, oauth: SandboxOAuthProvider,
                                 account: str, mailbox: str) -> RelayApp:
    """A started RelayApp over a fresh token store at ``store_path`` holding an authorized token set
    of ``account`` (run it on the relay's loop thread)."""
    store = fresh_store(store_path)
    await store.put(authorized_token_set(oauth, account, mailbox))
    app = RelayApp(config, store=store)
    await app.start()
    return app


def _loader(path: Path) -> RelayConfig:
    return load_config(path, env={})


def tokens_with(**options: Any) -> TokensFactory:
    """A tokens_factory: the TokenManager RelayApp builds, with test timing ``options``
    (retry_attempts, retry_base_delay_s, http, check_interval_s, clock, sleep)."""
    def make(config: RelayConfig, store: TokenStore) -> TokenManager:
        return TokenManager(config, store, lease_ttl_s=config.token_store.lease_ttl_s, **options)
    return make


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition",
               interval_s: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy (returned) or fail after ``timeout_s``: the deadline
    replaces a fixed sleep, so a slow machine waits longer instead of asserting too early."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class _Counted(Protocol):
    @property
    def counters(self) -> dict[str, int]: ...


def wait_settled(relay: AppRelay, *upstreams: _Counted, timeout_s: float = 20.0) -> None:
    """Wait until the relay runs no client session and every sandbox server in ``upstreams`` has no
    open connection. After that nothing more can reach the sandbox (a message needs a connection),
    so "no duplicate" / "nothing stored" / "not deleted" assertions cannot pass by being early."""
    wait_until(lambda: relay.active_sessions() == 0, timeout_s, "the relay's client sessions to end")
    for upstream in upstreams:
        wait_until(lambda u=upstream: u.counters.get("open_connections", 0) == 0, timeout_s,  # type: ignore[misc]
                   f"{type(upstream).__name__}'s connections to close")


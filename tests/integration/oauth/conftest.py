"""Fixtures for the OAuth engine tests: a sandbox OAuth server, a config pointing at it, a store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    ListenConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
)
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SandboxOAuthProvider
from relay.secret import Secret
from relay.tokens.store import EncryptedFileStore, generate_key

MAILBOX = "sales@sandbox.test"


class FakeClock:
    """A settable UTC clock for expiry tests."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def sandbox() -> Iterator[SandboxOAuthProvider]:
    """A running sandbox OAuth provider on 127.0.0.1 (port 0)."""
    with SandboxOAuthProvider() as server:
        yield server


def make_config(sandbox: SandboxOAuthProvider, tmp_path: Path, *, flow: str = "authorization_code",
                secret: str | None = DEFAULT_CLIENT_SECRET, key_file: Path | None = None,
                service_account_file: Path | None = None, scopes: tuple[str, ...] | None = ("mail",),
                accounts: int = 1) -> RelayConfig:
    """A RelayConfig with one generic credentials entry pointing at the sandbox."""
    creds = CredentialsConfig(
        name="sandbox", provider="generic", client_id=DEFAULT_CLIENT_ID, flow=flow,  # type: ignore[arg-type]
        client_secret=Secret(secret) if secret else None, scopes=scopes, redirect_host="127.0.0.1",
        authorize_url=sandbox.authorize_url, token_url=sandbox.token_url,
        device_authorization_url=sandbox.device_authorization_url, revocation_url=sandbox.revocation_url,
        service_account_file=service_account_file)
    accs = {}
    for i in range(accounts):
        name = "sales" if i == 0 else f"acct{i}"
        mailbox = MAILBOX if i == 0 else f"{name}@sandbox.test"
        accs[name] = AccountConfig(name=name, username=name, password_hash=None, mailbox=mailbox,
                                   credentials="sandbox", smtp=None, pop3=None)
    listener = ListenerConfig(enabled=False, host="127.0.0.1", port=0)
    return RelayConfig(listen=ListenConfig(listener, listener),
                       token_store=TokenStoreConfig(path=tmp_path / "store" / "tokens.enc", key_env=None,
                                                    key_file=key_file),
                       credentials={"sandbox": creds}, accounts=accs)


@pytest.fixture
def key() -> bytes:
    """A fresh store key."""
    import base64
    return base64.urlsafe_b64decode(generate_key())


@pytest.fixture
def store(tmp_path: Path, key: bytes) -> EncryptedFileStore:
    """An empty encrypted file store in tmp_path/store."""
    return EncryptedFileStore(tmp_path / "store" / "tokens.enc", key).open()

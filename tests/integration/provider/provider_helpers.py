"""Helpers for the provider tests: a `microsoft` credentials entry whose endpoints are the sandbox's,
self-signed certificates with chosen lifetimes, seeded tokens with chosen scopes, the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from relay.passwords import hash_password
from relay.sandbox.oauth import DEFAULT_CLIENT_ID
from relay.sandbox.world import SandboxWorld
from relay.secret import Secret
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key

PASSWORD = "provider test password 7"
MAILBOX = "ops@sandbox.test"


def make_certificate(directory: Path, name: str, *, days: int = 365,
                     passphrase: str | None = None) -> tuple[Path, Path]:
    """A self-signed RSA certificate valid for ``days`` (negative: already expired); (cert, key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"relay {name}")])
    now = datetime.now(UTC)
    start = now - timedelta(days=1) if days > 0 else now + timedelta(days=days - 30)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase.encode())
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           encryption))
    key_file.chmod(0o600)
    return cert_file, key_file


@dataclass
class ProviderSetup:
    """relay.yaml with one `microsoft` credentials entry ('ms') at the sandbox and its accounts."""

    world: SandboxWorld
    dir: Path
    key: str
    credentials: dict[str, Any] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        oauth = self.world.oauth
        self.credentials = {"provider": "microsoft", "client_id": DEFAULT_CLIENT_ID,
                            "tenant_id": "contoso.test", "flow": "client_credentials",
                            "token_url": oauth.token_url, "authorize_url": oauth.authorize_url}
        self.add_account("ops", MAILBOX)
        self.world.smtp.auth_failure_style = "microsoft"  # 535 5.7.3 like Exchange Online

    @property
    def config_path(self) -> Path:
        """The YAML file."""
        return self.dir / "relay.yaml"

    def add_account(self, name: str, mailbox: str) -> None:
        """An account on the sandbox upstreams using the 'ms' credentials."""
        self.accounts[name] = self.world.account_yaml(f"{name}-app", hash_password(PASSWORD, log2_n=10),
                                                      mailbox, credentials="ms")

    def use_certificate(self, cert: Path, key: Path, **extra: Any) -> None:
        """Authenticate the 'ms' credentials with this certificate instead of a secret."""
        self.credentials["client_certificate"] = {"cert_file": str(cert), "key_file": str(key), **extra}

    def write(self) -> Path:
        """Write relay.yaml and return its path."""
        data = {
            "listen": {"smtp": {"enabled": False}, "pop3": {"enabled": False}},
            "token_store": {"path": str(self.dir / "tokens.enc"), "key_env": None,
                            "key_file": str(self.dir / "store.key")},
            "credentials": {"ms": self.credentials},
            "accounts": self.accounts,
        }
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        return self.config_path

    def seed(self, account: str, user: str, scope: str) -> None:
        """Store a delegated token for ``user`` with ``scope`` (as after `relay authorize`)."""
        oauth = self.world.oauth
        client = oauth.grants.clients[DEFAULT_CLIENT_ID]
        body = oauth.grants.token_response(user, client, scope, with_refresh=True)
        store = EncryptedFileStore(self.dir / "tokens.enc", decode_key(self.key, "test"))
        now = datetime.now(UTC)
        asyncio.run(store.put(TokenSet(account=account, credentials="ms",
                                       access_token=Secret(str(body["access_token"])),
                                       expires_at=now + timedelta(hours=1),
                                       refresh_token=Secret(str(body["refresh_token"])),
                                       scopes=tuple(scope.split()), obtained_at=now)))


def run_relay(*args: str, timeout_s: float = 60,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a relay command and capture its output (``env`` replaces the environment when given)."""
    environment = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False, env=environment)

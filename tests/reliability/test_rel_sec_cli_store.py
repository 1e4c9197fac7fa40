"""Security: `relay tokens` / `relay revoke` output and effects, and private store and key files.

The commands run in-process through relay.cli.main with a YAML config whose store holds real
sandbox tokens (as after `relay authorize`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from relay.cli import main
from relay.config.model import TokenStoreConfig
from relay.configuration import load_config
from relay.passwords import hash_password
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_SCOPE, SandboxOAuthProvider
from relay.secret import Secret
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, load_key, open_store, write_key_file

MAILBOX = "cli@sandbox.test"
UNSET_ENV = "REL_SEC_CLI_STORE_KEY_UNSET"


@pytest.fixture
def oauth() -> Iterator[SandboxOAuthProvider]:
    """A running sandbox OAuth provider on 127.0.0.1."""
    with SandboxOAuthProvider() as server:
        yield server


def write_config(tmp_path: Path, oauth: SandboxOAuthProvider) -> Path:
    """A YAML config: one account 'sales' (generic credentials at the sandbox), store + key file."""
    data = {
        "token_store": {"path": str(tmp_path / "store" / "tokens.enc"), "key_env": UNSET_ENV,
                        "key_file": str(tmp_path / "keys" / "store.key")},
        "credentials": {"sandbox": {
            "provider": "generic", "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET,
            "scopes": DEFAULT_SCOPE.split(), "authorize_url": oauth.authorize_url,
            "token_url": oauth.token_url, "revocation_url": oauth.revocation_url}},
        "accounts": {"sales": {"username": "sales-app", "mailbox": MAILBOX, "credentials": "sandbox",
                               "password_hash": hash_password("pw", log2_n=4),
                               "smtp": False, "pop3": False}},
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def seed(tmp_path: Path, oauth: SandboxOAuthProvider) -> tuple[TokenSet, bytes]:
    """Create the key file and a store holding live sandbox tokens for 'sales'."""
    key_file = tmp_path / "keys" / "store.key"
    write_key_file(key_file)
    key = load_key(TokenStoreConfig(path=tmp_path / "x", key_env=None, key_file=key_file), {})
    now = datetime.now(UTC)
    tokens = TokenSet(account="sales", credentials="sandbox",
                      access_token=Secret(oauth.issue_access_token(MAILBOX)),
                      expires_at=now + timedelta(hours=1),
                      refresh_token=Secret(oauth.issue_refresh_token(MAILBOX)),
                      scopes=tuple(DEFAULT_SCOPE.split()), obtained_at=now)
    EncryptedFileStore(tmp_path / "store" / "tokens.enc", key)._modify("sales", tokens)
    return tokens, key


def _forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


def test_tokens_output_shows_status_but_no_secret(tmp_path, oauth, capsys):
    """`relay tokens` lists the account as valid and prints no access token, refresh token, client
    secret or store key (nor their base64 forms)."""
    config = write_config(tmp_path, oauth)
    tokens, key = seed(tmp_path, oauth)
    assert main(["tokens", "-c", str(config)]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "sales" in out.out and "valid" in out.out and "sandbox" in out.out
    key_text = (tmp_path / "keys" / "store.key").read_text().strip()
    secrets = [tokens.access_token.reveal(), tokens.refresh_token.reveal(), DEFAULT_CLIENT_SECRET, key_text,
               key_text.rstrip("=")]
    for secret in secrets:
        for form in _forms(secret):
            assert form not in text
    assert base64.b64encode(key).decode().rstrip("=") not in text


def test_revoke_forgets_tokens_and_revokes_upstream(tmp_path, oauth, capsys):
    """`relay revoke sales` calls the revocation endpoint once (the refresh token is then dead at the
    provider), removes the account from the store (file stays 0600), and prints no token."""
    config = write_config(tmp_path, oauth)
    tokens, key = seed(tmp_path, oauth)
    assert main(["revoke", "sales", "-c", str(config)]) == 0
    out = capsys.readouterr()
    assert "Forgot the tokens of account 'sales'" in out.out and "revoked at the provider" in out.out
    assert tokens.refresh_token.reveal() not in out.out + out.err
    assert tokens.access_token.reveal() not in out.out + out.err
    assert oauth.counters.get("revoke_requests", 0) == 1
    refresh = oauth.grants.refresh[tokens.refresh_token.reveal()]
    assert refresh.revoked
    store_path = tmp_path / "store" / "tokens.enc"
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    assert asyncio.run(EncryptedFileStore(store_path, key).open().load_all()) == {}
    assert main(["tokens", "-c", str(config)]) == 0
    assert "not authorized" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["key file", "store"])
@pytest.mark.parametrize("mode", [0o640, 0o604], ids=["group", "others"])
def test_group_or_world_readable_file_is_refused_with_chmod_fix(tmp_path, oauth, capsys, which, mode):
    """A key file or store readable by group or others makes `relay tokens` and `relay revoke` fail
    with a message naming the file and `chmod 600 FILE`, and the file is left untouched."""
    config = write_config(tmp_path, oauth)
    seed(tmp_path, oauth)
    path = tmp_path / ("keys/store.key" if which == "key file" else "store/tokens.enc")
    path.chmod(mode)
    before = path.read_bytes()
    for argv in (["tokens", "-c", str(config)], ["revoke", "sales", "-c", str(config)]):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert str(path) in err and f"chmod 600 {path}" in err and "group/others" in err
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == mode
    assert oauth.counters.get("revoke_requests", 0) == 0


def test_created_files_are_private_even_with_a_permissive_umask(tmp_path, oauth, capsys):
    """With umask 000, `relay init-key` and a store write still create 0600 files (key, store,
    lock) and 0700 directories."""
    config = write_config(tmp_path, oauth)
    old = os.umask(0)
    try:
        assert main(["init-key", "--key-file", str(tmp_path / "keys" / "store.key")]) == 0
        capsys.readouterr()
        store = open_store(load_config(config).token_store)
        assert isinstance(store, EncryptedFileStore)
        now = datetime.now(UTC)
        store._modify("sales", TokenSet(account="sales", credentials="sandbox", access_token=Secret("a"),
                                        expires_at=now + timedelta(hours=1), refresh_token=Secret("r"),
                                        scopes=("mail",), obtained_at=now))
    finally:
        os.umask(old)
    for path in (tmp_path / "keys" / "store.key", tmp_path / "store" / "tokens.enc",
                 tmp_path / "store" / "tokens.enc.lock"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (tmp_path / "keys", tmp_path / "store"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert main(["tokens", "-c", str(config)]) == 0

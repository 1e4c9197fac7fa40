"""The encrypted file token store: round trip, integrity, permissions, atomicity, reload, keys."""

from __future__ import annotations

import base64
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.config.model import TokenStoreConfig
from relay.errors import TokenStoreError
from relay.secret import Secret
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, generate_key, load_key, open_store, write_key_file

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def tokens(account: str = "sales", access: str = "AT-1") -> TokenSet:
    """A TokenSet with recognisable values."""
    return TokenSet(account=account, credentials="contoso", access_token=Secret(access),
                    expires_at=NOW + timedelta(hours=1), refresh_token=Secret("RT-1"),
                    scopes=("a", "b"), obtained_at=NOW)


@pytest.fixture
def key() -> bytes:
    """A fresh key."""
    return base64.urlsafe_b64decode(generate_key())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """The store path inside a not-yet-existing directory."""
    return tmp_path / "state" / "tokens.enc"


async def test_round_trip_and_file_is_encrypted(path, key):
    """A stored TokenSet reads back equal, and no token appears in the file bytes."""
    store = EncryptedFileStore(path, key).open()
    await store.put(tokens())
    again = await EncryptedFileStore(path, key).open().get("sales")
    assert again == tokens()
    raw = path.read_bytes()
    assert b"AT-1" not in raw and b"RT-1" not in raw and raw.startswith(b"XO2RTOK\x01")


async def test_modes_0600_and_directory_0700(path, key):
    """A new store file is 0600 and a created directory 0700."""
    await EncryptedFileStore(path, key).put(tokens())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_each_write_uses_a_fresh_nonce(path, key):
    """Writing the same content twice gives different ciphertexts."""
    store = EncryptedFileStore(path, key)
    await store.put(tokens())
    first = path.read_bytes()
    await store.put(tokens())
    assert path.read_bytes()[8:20] != first[8:20]


async def test_wrong_key_is_a_clear_error(path, key):
    """Opening with another key raises TokenStoreError naming the file and the key settings."""
    await EncryptedFileStore(path, key).put(tokens())
    other = base64.urlsafe_b64decode(generate_key())
    with pytest.raises(TokenStoreError, match=r"cannot be decrypted: the key is wrong") as info:
        EncryptedFileStore(path, other).open()
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "cannot be decrypted"),
    (lambda b: b[:-5], "cannot be decrypted"),
    (lambda b: b[:20], "truncated"),
    (lambda b: b[:3], "truncated"),
    (lambda b: b"", "truncated"),
    (lambda b: b"hello world, not a store at all", "not an xoauth2-relay token store"),
    (lambda b: b[:7] + b"\x09" + b[8:], "format version 9"),
])
async def test_tampered_corrupt_or_truncated_files_are_refused(path, key, mutate, needle):
    """Every damaged file raises TokenStoreError with what is wrong, and is left untouched by writes."""
    store = EncryptedFileStore(path, key)
    await store.put(tokens())
    damaged = mutate(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(TokenStoreError, match=needle):
        EncryptedFileStore(path, key).open()
    with pytest.raises(TokenStoreError):
        await EncryptedFileStore(path, key).put(tokens("other"))
    assert path.read_bytes() == damaged


async def test_refuses_group_or_world_readable_store(path, key):
    """A store readable by others is refused with the chmod fix, like ssh does."""
    await EncryptedFileStore(path, key).put(tokens())
    path.chmod(0o644)
    with pytest.raises(TokenStoreError, match=rf"chmod 600 {path}"):
        EncryptedFileStore(path, key).open()


async def test_reloads_when_another_process_wrote(path, key):
    """A store re-reads the file when another writer changed it (no restart needed): at once when
    asked for a fresh read, and by itself once its check interval has passed."""
    serving = EncryptedFileStore(path, key, check_interval_s=0).open()
    lazy = EncryptedFileStore(path, key, check_interval_s=3600).open()
    assert await serving.get("sales") is None
    await EncryptedFileStore(path, key).open().put(tokens(access="AT-2"))
    got = await serving.get("sales")
    assert got is not None and got.access_token == Secret("AT-2")
    assert await lazy.get("sales") is None  # answered from memory: no file I/O on this read
    fresh = await lazy.get("sales", fresh=True)
    assert fresh is not None and fresh.access_token == Secret("AT-2")


async def test_concurrent_writers_do_not_lose_updates(path, key):
    """Two store objects on one file each add an account; both accounts survive."""
    a, b = EncryptedFileStore(path, key).open(), EncryptedFileStore(path, key).open()
    await a.put(tokens("one"))
    await b.put(tokens("two"))
    assert await EncryptedFileStore(path, key).open().list_accounts() == ["one", "two"]


async def test_delete_and_list(path, key):
    """delete forgets an account and reports whether it existed."""
    store = EncryptedFileStore(path, key)
    await store.put(tokens("one"))
    await store.put(tokens("two"))
    assert await store.delete("one") is True
    assert await store.delete("one") is False
    assert await store.list_accounts() == ["two"]
    assert list(await store.load_all()) == ["two"]


async def test_no_temp_files_left_behind(path, key):
    """Atomic writes leave only the store and its lock file in the directory."""
    store = EncryptedFileStore(path, key)
    for i in range(3):
        await store.put(tokens(access=f"AT-{i}"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.enc", "tokens.enc.lock"]


def test_key_from_env_wins_and_is_validated(tmp_path):
    """The env var named by key_env is used when set; a malformed key is a clear error."""
    k = generate_key()
    cfg = TokenStoreConfig(path=tmp_path / "t", key_env="MY_KEY", key_file=tmp_path / "missing")
    assert load_key(cfg, {"MY_KEY": k}) == base64.urlsafe_b64decode(k)
    with pytest.raises(TokenStoreError, match="environment variable MY_KEY is not 32 bytes"):
        load_key(cfg, {"MY_KEY": "short"})


def test_key_file_created_private_and_never_overwritten(tmp_path):
    """write_key_file makes a 0600 key file that load_key reads, and refuses to overwrite it."""
    key_path = tmp_path / "keys" / "store.key"
    write_key_file(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cfg = TokenStoreConfig(path=tmp_path / "t", key_env=None, key_file=key_path)
    assert len(load_key(cfg, {})) == 32
    with pytest.raises(TokenStoreError, match="already exists"):
        write_key_file(key_path)


def test_world_readable_key_file_is_refused(tmp_path):
    """A key file readable by others is refused with the chmod fix."""
    key_path = tmp_path / "store.key"
    write_key_file(key_path)
    os.chmod(key_path, 0o644)
    cfg = TokenStoreConfig(path=tmp_path / "t", key_env=None, key_file=key_path)
    with pytest.raises(TokenStoreError, match="chmod 600"):
        load_key(cfg, {})


def test_missing_key_says_how_to_create_one(tmp_path):
    """No env var and no key file: the error names the settings and `relay init-key`."""
    cfg = TokenStoreConfig(path=tmp_path / "t", key_env="RELAY_STORE_KEY_TEST_UNSET", key_file=None)
    with pytest.raises(TokenStoreError, match="relay init-key"):
        open_store(cfg, {})

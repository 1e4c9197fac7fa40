"""Store and key paths that are not regular files, and hostile decrypted records (issue 22 item 15).

Before the fix a FIFO at token_store.path or token_store.key_file made `relay tokens` (and
`relay serve`) block forever in open(); a record with an out-of-range timestamp or deep nesting
raised OverflowError / RecursionError instead of a TokenStoreError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config.model import TokenStoreConfig
from relay.errors import TokenStoreError
from relay.sandbox.oauth import SandboxOAuthProvider
from relay.tokens.codec import FILE_CONTEXT, seal
from relay.tokens.keys import load_key
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

from .test_rel_sec_cli_store import (  # type: ignore[import-not-found]
    oauth,  # noqa: F401 - fixture
    seed,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]


def _relay(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, check=False)


@pytest.mark.parametrize("which", ["store", "key"])
def test_fifo_store_or_key_path_is_refused_not_hung(tmp_path: Path, oauth: SandboxOAuthProvider,  # noqa: F811
                                                    which: str) -> None:
    """A FIFO (mode 0600) at token_store.path or key_file: `relay tokens` exits at once with an
    error naming the setting and 'not a regular file' instead of blocking in open()."""
    config = write_config(tmp_path, oauth)
    seed(tmp_path, oauth)
    target = tmp_path / "store" / "tokens.enc" if which == "store" else tmp_path / "keys" / "store.key"
    target.unlink()
    os.mkfifo(target, 0o600)
    result = _relay("tokens", "-c", str(config), timeout_s=30)
    assert result.returncode != 0
    setting = "token_store.path" if which == "store" else "token_store.key_file"
    assert setting in result.stderr and "not a regular file (a FIFO)" in result.stderr, result.stderr


def test_directory_as_key_file_is_refused(tmp_path: Path) -> None:
    """A directory at key_file is named as such (not an IsADirectoryError traceback)."""
    (tmp_path / "k").mkdir(mode=0o700)
    cfg = TokenStoreConfig(path=tmp_path / "t", key_env=None, key_file=tmp_path / "k")
    with pytest.raises(TokenStoreError, match=r"key_file: .* is not a regular file \(a directory\)"):
        load_key(cfg, {})


def _entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "account": "sales", "credentials": "c", "access_token": "AT", "refresh_token": "RT",
        "expires_at": "2030-01-01T00:00:00+00:00", "obtained_at": "2030-01-01T00:00:00+00:00",
        "scopes": [], "needs_authorization": False, "last_error": None}
    entry.update(changes)
    return entry


@pytest.mark.parametrize(("plaintext", "label"), [
    (json.dumps({"accounts": {"sales": _entry(expires_at="0001-01-01T00:00:00+23:59")}}), "overflow"),
    (json.dumps({"accounts": {"sales": _entry(obtained_at="9999-12-31T23:59:59-23:59")}}), "overflow2"),
    ('{"accounts": ' + "[" * 100_000 + "]" * 100_000 + "}", "deep nesting"),
    (json.dumps({"accounts": {"sales": _entry()}, "versions": {"sales": 10**30}}), "huge version"),
    (json.dumps({"accounts": {"sales": _entry()}, "versions": [1]}), "versions not an object"),
    (json.dumps([1, 2]), "not an object"),
], ids=["offset-overflow", "offset-overflow-max", "deep-nesting", "huge-version", "versions-list",
        "not-an-object"])
async def test_malformed_decrypted_records_are_a_clear_error(tmp_path: Path, plaintext: str,
                                                             label: str) -> None:
    """A record that decrypts (right key) but holds hostile values is refused with TokenStoreError
    naming the file and the fix, for reads and for writes (which leave the file untouched)."""
    key = decode_key(generate_key(), "test")
    path = tmp_path / "s" / "tokens.enc"
    path.parent.mkdir(mode=0o700)
    blob = seal(key, plaintext.encode(), FILE_CONTEXT)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, blob)
    os.close(fd)
    with pytest.raises(TokenStoreError, match="malformed") as info:
        EncryptedFileStore(path, key).open()
    assert str(path) in str(info.value) or "account 'sales'" in str(info.value)
    with pytest.raises(TokenStoreError):
        await EncryptedFileStore(path, key).load_all()
    assert path.read_bytes() == blob

"""The token store: an interface, and one encrypted file (AES-256-GCM) as its implementation.

File layout: ``MAGIC(7) VERSION(1) NONCE(12) CIPHERTEXT+TAG`` where the plaintext is JSON
``{"accounts": {name: TokenSet}}`` and the header is bound as associated data. Every write makes a
fresh random nonce and replaces the file atomically; several processes (a serving relay and
``relay authorize``) share the file under an advisory lock and each re-reads it when it changed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import os
import stat
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.config.model import TokenStoreConfig
from relay.errors import TokenStoreError
from relay.tokens.model import TokenSet

MAGIC = b"XO2RTOK"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
ASSOCIATED_DATA = HEADER + b"|xoauth2-relay token store"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


class TokenStore(ABC):
    """Where TokenSets live. Async so a network backend (Redis ...) fits without touching callers."""

    @abstractmethod
    async def get(self, account: str) -> TokenSet | None:
        """Return the account's tokens, or None."""

    @abstractmethod
    async def put(self, tokens: TokenSet) -> None:
        """Store (replace) the account's tokens durably before returning."""

    @abstractmethod
    async def delete(self, account: str) -> bool:
        """Forget the account's tokens; True if there were any."""

    @abstractmethod
    async def list_accounts(self) -> list[str]:
        """Return the names of the accounts with stored tokens."""

    @abstractmethod
    async def load_all(self) -> dict[str, TokenSet]:
        """Return every stored TokenSet by account name."""


# --- keys ----------------------------------------------------------------------------------------

def generate_key() -> str:
    """Return a new random 256-bit key as URL-safe base64 text (for key_file or the env var)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def decode_key(text: str, source: str) -> bytes:
    """Decode a base64 (standard or URL-safe) 32-byte key; TokenStoreError naming ``source``."""
    cleaned = text.strip()
    try:
        urlsafe = cleaned.replace("+", "-").replace("/", "_")
        raw = base64.urlsafe_b64decode(urlsafe + "=" * (-len(urlsafe) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise TokenStoreError(f"the token store key in {source} is not 32 bytes of base64; create one with "
                              "`relay init-key`")
    return raw


def check_private(path: Path, what: str) -> None:
    """Refuse a file that group or others may access (like ssh does for private keys)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TokenStoreError(f"{what} {path} is accessible by group/others (mode {mode:04o}); "
                              f"run `chmod 600 {path}`")


def load_key(config: TokenStoreConfig, env: Mapping[str, str] | None = None) -> bytes:
    """Read the key from the env var ``key_env`` if set there, else from ``key_file``."""
    env = os.environ if env is None else env
    if config.key_env and env.get(config.key_env):
        return decode_key(env[config.key_env], f"environment variable {config.key_env}")
    if config.key_file is not None:
        path = Path(config.key_file)
        try:
            check_private(path, "the token store key file")
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise TokenStoreError(f"the token store key file {path} does not exist; create it with "
                                  f"`relay init-key --key-file {path}`") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenStoreError(f"cannot read the token store key file {path}: {exc}") from None
        return decode_key(text, f"key file {path}")
    where = f"set the environment variable {config.key_env}" if config.key_env else "set token_store.key_env"
    raise TokenStoreError(f"no token store key: {where} or token_store.key_file; create a key with "
                          "`relay init-key`")


def write_key_file(path: Path) -> None:
    """Create ``path`` (mode 0600, never overwriting) holding a new key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TokenStoreError(f"{path} already exists; refusing to overwrite a key (tokens encrypted "
                              "with it would be lost)") from None
    except OSError as exc:
        raise TokenStoreError(f"cannot create the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(generate_key() + "\n")
        f.flush()
        os.fsync(f.fileno())


# --- the encrypted file --------------------------------------------------------------------------

def encrypt_payload(key: bytes, accounts: Mapping[str, TokenSet]) -> bytes:
    """Return the file bytes for ``accounts`` (fresh nonce)."""
    plain = json.dumps({"accounts": {k: v.to_json() for k, v in accounts.items()}}).encode()
    nonce = os.urandom(NONCE_BYTES)
    return HEADER + nonce + AESGCM(key).encrypt(nonce, plain, ASSOCIATED_DATA)


def decrypt_payload(key: bytes, blob: bytes, path: Path) -> dict[str, TokenSet]:
    """Parse file bytes; TokenStoreError saying what is wrong with ``path`` and what to do."""
    if len(blob) < len(HEADER):
        raise TokenStoreError(f"the token store {path} is truncated ({len(blob)} bytes); restore it from a "
                              "backup, or move it away and run `relay authorize` for each account")
    if not blob.startswith(MAGIC):
        raise TokenStoreError(f"{path} is not an xoauth2-relay token store (bad header); check "
                              "token_store.path")
    if blob[len(MAGIC)] != VERSION:
        raise TokenStoreError(f"the token store {path} has format version {blob[len(MAGIC)]}, this relay "
                              f"reads version {VERSION}; upgrade the relay")
    if len(blob) < len(HEADER) + NONCE_BYTES + TAG_BYTES:
        raise TokenStoreError(f"the token store {path} is truncated; restore it from a backup, or move it "
                              "away and run `relay authorize` for each account")
    nonce = blob[len(HEADER):len(HEADER) + NONCE_BYTES]
    try:
        plain = AESGCM(key).decrypt(nonce, blob[len(HEADER) + NONCE_BYTES:], ASSOCIATED_DATA)
    except InvalidTag:
        raise TokenStoreError(
            f"the token store {path} cannot be decrypted: the key is wrong, or the file was modified or "
            "truncated. Use the key it was written with (token_store.key_env / key_file); if that key is "
            "lost, move the file away and run `relay authorize` for each account") from None
    try:
        data = json.loads(plain.decode("utf-8"))
        entries = data["accounts"]
        return {str(name): TokenSet.from_json(entry) for name, entry in entries.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TokenStoreError(f"the token store {path} decrypted but its content is malformed; move it "
                              "away and run `relay authorize` for each account") from None


class EncryptedFileStore(TokenStore):
    """All accounts' tokens in one AES-256-GCM file, re-read whenever it changes on disk."""

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise TokenStoreError("the token store key must be 32 bytes")
        self.path = Path(path)
        self._key = key
        self._lock = threading.Lock()
        self._data: dict[str, TokenSet] = {}
        self._signature: tuple[int, int, int] | None = None

    def open(self) -> EncryptedFileStore:
        """Read the file now so a wrong key or corrupt file is reported at start."""
        with self._lock:
            self._reload_if_changed()
        return self

    async def get(self, account: str) -> TokenSet | None:
        """Return the account's tokens (re-reading the file if another process changed it)."""
        with self._lock:
            self._reload_if_changed()
            return self._data.get(account)

    async def load_all(self) -> dict[str, TokenSet]:
        """Return a copy of every stored TokenSet."""
        with self._lock:
            self._reload_if_changed()
            return dict(self._data)

    async def list_accounts(self) -> list[str]:
        """Return the stored account names, sorted."""
        return sorted(await self.load_all())

    async def put(self, tokens: TokenSet) -> None:
        """Store ``tokens`` durably (fsync + atomic replace) before returning."""
        await asyncio.to_thread(self._modify, tokens.account, tokens)

    async def delete(self, account: str) -> bool:
        """Forget the account; True if it was stored."""
        return await asyncio.to_thread(self._modify, account, None)

    # --- internals ---

    def _modify(self, account: str, tokens: TokenSet | None) -> bool:
        with self._lock, self._file_lock():
            self._reload_if_changed()
            existed = account in self._data
            if tokens is None and not existed:
                return False
            new = dict(self._data)
            if tokens is None:
                del new[account]
            else:
                new[account] = tokens
            self._write(new)
            self._data = new
            return existed

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialise writers across processes (advisory flock on a sibling .lock file)."""
        self._ensure_dir()
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise TokenStoreError(f"cannot create the lock file {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure_dir(self) -> None:
        directory = self.path.parent
        if not directory.exists():
            try:
                directory.mkdir(parents=True, mode=0o700)
            except OSError as exc:
                raise TokenStoreError(f"cannot create the token store directory {directory}: "
                                      f"{exc.strerror}") from None

    def _reload_if_changed(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._data, self._signature = {}, None
            return
        except OSError as exc:
            raise TokenStoreError(f"cannot access the token store {self.path}: {exc.strerror}") from None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        check_private(self.path, "the token store")
        try:
            blob = self.path.read_bytes()
        except OSError as exc:
            raise TokenStoreError(f"cannot read the token store {self.path}: {exc.strerror}") from None
        self._data = decrypt_payload(self._key, blob, self.path)
        self._signature = signature

    def _write(self, accounts: Mapping[str, TokenSet]) -> None:
        """Write atomically: temp file in the same directory, fsync, rename, fsync the directory."""
        directory = self.path.parent
        blob = encrypt_payload(self._key, accounts)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise TokenStoreError(f"cannot write the token store {self.path}: {exc.strerror}; the old file "
                                  "is unchanged") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, self.path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise TokenStoreError(f"cannot write the token store {self.path}: {exc.strerror}; the old file "
                                  "is unchanged") from None
        st = self.path.stat()
        self._signature = (st.st_mtime_ns, st.st_size, st.st_ino)


def open_store(config: TokenStoreConfig, env: Mapping[str, str] | None = None) -> TokenStore:
    """Open the configured store, reading it once so key and file problems surface now."""
    return EncryptedFileStore(Path(config.path), load_key(config, env)).open()

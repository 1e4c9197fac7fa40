"""The encrypted file token store (AES-256-GCM): the TokenStore for a relay on one host.

Reads never block the event loop: they answer from an immutable in-memory snapshot that is
swapped in one assignment. Checking the file for changes (``stat``, read, decrypt) and every write
(``flock`` on a sibling ``.lock`` file shared with `relay authorize`, temp file, ``fsync``, atomic
rename, directory ``fsync``) run in a worker thread; writers of one process queue on an asyncio
lock. A slow disk or another process holding the file lock therefore delays only the writer.

File layout: see relay.tokens.codec; the plaintext is JSON ``{"accounts": {name: TokenSet},
"versions": {name: n}}``. Files written before versions existed read as version 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from relay.config.model import TokenStoreConfig
from relay.errors import TokenStoreError
from relay.tokens.codec import decrypt_file, decrypt_payload, encrypt_payload
from relay.tokens.interface import Lease, LocalLease, StoredTokens, TokenStore, VersionConflict
from relay.tokens.keys import (
    KEY_BYTES,
    check_private,
    decode_key,
    generate_key,
    load_key,
    read_private_file,
    write_key_file,
)
from relay.tokens.model import TokenSet

__all__ = ["KEY_BYTES", "EncryptedFileStore", "TokenStore", "check_private", "decode_key",
           "decrypt_payload", "encrypt_payload", "generate_key", "load_key", "open_store",
           "write_key_file"]

log = logging.getLogger("relay.tokens")

MAX_STORE_BYTES = 16 * 1024 * 1024
DEFAULT_CHECK_INTERVAL_S = 1.0  # how often a read triggers a look at the file (off the loop)
CHECK_WAIT_S = 0.05  # how long a read waits for that look before answering from memory
WATCH_POLL_S = 0.2

Signature = tuple[int, int, int]
Fsync = Callable[[int], None]


@dataclass(frozen=True)
class _Snapshot:
    """One decrypted state of the file; never mutated, replaced as a whole."""

    accounts: Mapping[str, TokenSet]
    versions: Mapping[str, int]
    signature: Signature | None

    def stored(self, account: str) -> StoredTokens:
        return StoredTokens(self.accounts.get(account), self.versions.get(account, 0))


_EMPTY = _Snapshot({}, {}, None)


@dataclass(frozen=True)
class _Outcome:
    snapshot: _Snapshot
    before: StoredTokens
    conflict: bool = False


class EncryptedFileStore:
    """All accounts' tokens in one AES-256-GCM file, re-read (off the loop) when it changes."""

    def __init__(self, path: Path, key: bytes, *, check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
                 fsync: Fsync = os.fsync) -> None:
        if len(key) != KEY_BYTES:
            raise TokenStoreError("the token store key must be 32 bytes")
        self.path = Path(path)
        self._key = key
        self._fsync = fsync
        self._check_interval_s = check_interval_s
        self._snapshot = _EMPTY
        self._loaded = False
        self._seq = 0  # bumped on every install; a file check started earlier is then discarded
        self._checked_at = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._check_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._reported: str | None = None

    @property
    def describe(self) -> str:
        """The setting an operator looks at."""
        return f"token_store.path {self.path}"

    def open(self) -> EncryptedFileStore:
        """Read the file now (blocking; at start or in a command) so problems surface at once."""
        self._install(self._read(self._snapshot))
        return self

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, account: str, *, fresh: bool = False) -> TokenSet | None:
        """Return the account's tokens from memory (``fresh``: re-read the file first, off the loop)."""
        return (await self.get_versioned(account, fresh=fresh)).tokens

    async def get_versioned(self, account: str, *, fresh: bool = False) -> StoredTokens:
        """Return the tokens and their version; see get."""
        if fresh or not self._loaded:
            await self.reload()
        else:
            await self._check_if_due()
        return self._snapshot.stored(account)

    async def load_all(self) -> dict[str, TokenSet]:
        """Re-read the file (off the loop) and return a copy of every stored TokenSet."""
        await self.reload()
        return dict(self._snapshot.accounts)

    async def list_accounts(self) -> list[str]:
        """Return the stored account names, sorted."""
        return sorted(await self.load_all())

    async def reload(self) -> None:
        """Re-read the file if it changed, in a worker thread; TokenStoreError when it is bad."""
        self._bind_loop()
        seq = self._seq
        snapshot = await asyncio.to_thread(self._read, self._snapshot)
        self._reported = None
        self._install(snapshot, seq)

    async def watch(self, account: str, after_version: int, timeout_s: float) -> StoredTokens | None:
        """Wait until the account's version differs from ``after_version`` (polling the file)."""
        deadline = time.monotonic() + timeout_s
        while True:
            current = self._snapshot.stored(account)
            if current.version != after_version:
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._bind_loop()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, WATCH_POLL_S))
            except TimeoutError:
                with contextlib.suppress(TokenStoreError):
                    await self.reload()

    async def try_lease(self, account: str, ttl_s: float) -> Lease | None:
        """Always granted: the token manager's in-process single flight is the exclusion here."""
        return LocalLease()

    async def close(self) -> None:
        """Stop a file check in progress (the snapshot stays readable)."""
        task, self._check_task = self._check_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task

    # --- writes --------------------------------------------------------------------------------

    async def put(self, tokens: TokenSet) -> int:
        """Store ``tokens`` durably (fsync + atomic replace) before returning; the new version."""
        outcome = await self._write(tokens.account, tokens, None)
        return outcome.snapshot.versions[tokens.account]

    async def compare_and_set(self, tokens: TokenSet, expected_version: int) -> int:
        """Store ``tokens`` only if the file holds ``expected_version``; else VersionConflict."""
        outcome = await self._write(tokens.account, tokens, expected_version)
        return outcome.snapshot.versions[tokens.account]

    async def delete(self, account: str) -> bool:
        """Forget the account; True if it was stored."""
        outcome = await self._write(account, None, None)
        return outcome.before.tokens is not None

    def _modify(self, account: str, tokens: TokenSet | None) -> bool:
        """Blocking write for callers without an event loop (tests, seeding); True if it existed."""
        outcome = self._modify_locked(account, tokens, None)
        self._install(outcome.snapshot)
        return outcome.before.tokens is not None

    async def _write(self, account: str, tokens: TokenSet | None, expected: int | None) -> _Outcome:
        self._bind_loop()
        async with self._write_lock:
            outcome = await asyncio.to_thread(self._modify_locked, account, tokens, expected)
        self._install(outcome.snapshot)
        if outcome.conflict:
            raise VersionConflict(account, expected or 0, outcome.before)
        return outcome

    # --- worker-thread side (no shared mutable state: reads one snapshot, returns a new one) ----

    def _modify_locked(self, account: str, tokens: TokenSet | None, expected: int | None) -> _Outcome:
        with self._file_lock():
            base = self._read(self._snapshot)
            before = base.stored(account)
            if expected is not None and before.version != expected:
                return _Outcome(base, before, conflict=True)
            if tokens is None and before.tokens is None:
                return _Outcome(base, before)
            accounts = dict(base.accounts)
            versions = dict(base.versions)
            if tokens is None:
                del accounts[account]
            else:
                accounts[account] = tokens
            versions[account] = before.version + 1
            signature = self._write_file(accounts, versions)
            return _Outcome(_Snapshot(accounts, versions, signature), before)

    def _read(self, base: _Snapshot) -> _Snapshot:
        """Return ``base`` if the file is unchanged, else the file's new content."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return _EMPTY
        except OSError as exc:
            raise TokenStoreError(f"token_store.path: cannot access the token store {self.path}: "
                                  f"{exc.strerror}") from None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == base.signature:
            return base
        try:
            blob = read_private_file(self.path, what="the token store", setting="token_store.path",
                                     max_bytes=MAX_STORE_BYTES)
        except FileNotFoundError:
            return _EMPTY
        payload = decrypt_file(self._key, blob, str(self.path))
        return _Snapshot(payload.accounts, payload.versions, signature)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialise writers across processes (advisory flock on a sibling .lock file)."""
        self._ensure_dir()
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
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

    def _write_file(self, accounts: Mapping[str, TokenSet], versions: Mapping[str, int]) -> Signature:
        """Write atomically: temp file in the same directory, fsync, rename, fsync the directory."""
        directory = self.path.parent
        blob = encrypt_payload(self._key, accounts, versions)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise TokenStoreError(f"cannot write the token store {self.path}: {exc.strerror}; the old file "
                                  "is unchanged") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                self._fsync(f.fileno())
            os.replace(tmp_name, self.path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                self._fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise TokenStoreError(f"cannot write the token store {self.path}: {exc.strerror}; the old file "
                                  "is unchanged") from None
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    # --- loop side -----------------------------------------------------------------------------

    def _install(self, snapshot: _Snapshot, seq_at_start: int | None = None) -> None:
        """Make ``snapshot`` current (one assignment) and wake watchers; a stale check is dropped."""
        if seq_at_start is not None and seq_at_start != self._seq:
            return
        self._loaded = True
        self._checked_at = time.monotonic()
        if snapshot is self._snapshot:
            return
        self._snapshot = snapshot
        self._seq += 1
        if self._loop is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _bind_loop(self) -> None:
        """Asyncio primitives belong to one loop; commands run several asyncio.run() in a row."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._check_task = None
            self._write_lock = asyncio.Lock()
            self._changed = asyncio.Event()

    async def _check_if_due(self) -> None:
        """At most every check_interval_s, look at the file off the loop; wait briefly for it."""
        self._bind_loop()
        now = time.monotonic()
        if self._check_task is None and now - self._checked_at >= self._check_interval_s:
            self._checked_at = now
            self._check_task = asyncio.create_task(self._background_check(), name="token-store-check")
        if self._check_task is not None:
            await asyncio.wait({self._check_task}, timeout=CHECK_WAIT_S)

    async def _background_check(self) -> None:
        try:
            await self.reload()
        except TokenStoreError as exc:
            if self._reported != str(exc):
                self._reported = str(exc)
                log.error("%s (serving the tokens read before)", exc)
        finally:
            self._check_task = None


def _check_protocol(store: EncryptedFileStore) -> TokenStore:
    return store  # mypy proves EncryptedFileStore implements the TokenStore protocol


def open_store(config: TokenStoreConfig, env: Mapping[str, str] | None = None) -> TokenStore:
    """Open the configured file store, reading it once so key and file problems surface now.

    Blocking: call it before the event loop runs, or through ``asyncio.to_thread``. For any
    backend (file or Redis) inside a running loop, use :func:`open_store_async`.
    """
    if config.backend != "file":
        raise TokenStoreError(f"token_store.backend: {config.backend} is opened with open_store_async")
    return EncryptedFileStore(Path(config.path), load_key(config, env)).open()


async def open_store_async(config: TokenStoreConfig, env: Mapping[str, str] | None = None) -> TokenStore:
    """Open the configured store (file or Redis) without blocking the loop; problems surface now."""
    if config.backend == "redis":
        from relay.tokens.redis_store import RedisTokenStore  # noqa: PLC0415 - optional dependency

        key = await asyncio.to_thread(load_key, config, env)
        try:
            store = RedisTokenStore(config.url or "", key, key_prefix=config.key_prefix,
                                    password=config.password.reveal() if config.password else None)
        except ImportError:
            raise TokenStoreError("token_store.backend: redis needs the redis package; install "
                                  "xoauth2-relay[redis]") from None
        try:
            return await store.open()
        except BaseException:
            await store.close()
            raise
    return await asyncio.to_thread(open_store, config, env)

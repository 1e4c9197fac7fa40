"""The Redis/Valkey token store: one grant shared by several relay replicas.

Layout under ``token_store.key_prefix`` (default ``xoauth2-relay:``):

- ``<prefix>tokens:<account>``: a hash ``{v: version, blob: sealed record}``; ``blob`` is empty for
  a deleted account (the version stays, so an old writer is still fenced). The record is sealed
  with the relay's AEAD key (relay.tokens.codec), bound to the Redis key name and the version: the
  key never leaves the relay and Redis only ever sees ciphertext.
- Writes are compare-and-set in one Lua script (version check, HSET, PUBLISH): an older writer can
  never overwrite newer tokens.
- ``<prefix>lease:<account>``: the refresh lease, ``SET NX PX`` with a random owner, released by a
  compare-and-delete script; ``<prefix>events`` carries "account version" / "account released".

Reads answer from memory (kept current by the pub/sub listener and a periodic check), so when
Redis is unreachable sessions keep the tokens held; the store backs off reconnecting with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from relay.errors import TokenStoreError
from relay.tokens.codec import parse_json, seal, token_set, unseal
from relay.tokens.interface import Lease, StoredTokens, VersionConflict
from relay.tokens.model import TokenSet
from relay.tokens.redis_errors import describe_url, translate

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("relay.tokens")

T = TypeVar("T")

CAS_SCRIPT = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if cur ~= tonumber(ARGV[1]) then return cur end
redis.call('HSET', KEYS[1], 'v', cur + 1, 'blob', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. (cur + 1))
return -1
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' released')
  return 1
end
return 0
"""
REDIS_FIX = "move the record away (`relay tokens import` a backup) or run `relay authorize` for the account"
CHECK_INTERVAL_S = 1.0
CHECK_WAIT_S = 0.05
WATCH_POLL_S = 0.25
BACKOFF_MAX_S = 5.0
LISTEN_POLL_S = 0.5


class RedisLease:
    """A lease held in Redis; released only if it is still ours (compare-and-delete)."""

    def __init__(self, store: RedisTokenStore, key: str, owner: str, account: str) -> None:
        self._store, self._key, self._owner, self._account = store, key, owner, account
        self._held = True

    @property
    def held(self) -> bool:
        """True until released."""
        return self._held

    async def release(self) -> None:
        """Delete the lease if we still own it and tell waiters; a lost lease is not an error."""
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(TokenStoreError):
            await self._store.run(lambda r: r.eval(RELEASE_SCRIPT, 1, self._key, self._owner,
                                                   self._store.channel, self._account))


class RedisTokenStore:
    """TokenStore over Redis/Valkey (redis-py's asyncio client)."""

    def __init__(self, url: str, key: bytes, *, key_prefix: str = "xoauth2-relay:",
                 password: str | None = None, timeout_s: float = 2.0,
                 check_interval_s: float = CHECK_INTERVAL_S) -> None:
        import redis.asyncio as aioredis  # noqa: PLC0415 - only for this backend

        self.url = url
        self._where = describe_url(url)
        self._key = key
        self.prefix = key_prefix
        self.channel = f"{key_prefix}events"
        self._check_interval_s = check_interval_s
        self._password_set = bool(password) or "@" in url
        try:
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                health_check_interval=0, retry_on_timeout=False)
        except ValueError as exc:
            raise TokenStoreError(f"token_store.url: '{self._where}' is not a Redis URL ({exc}); use "
                                  "redis://HOST:PORT/DB, rediss://... (TLS) or unix:///path") from None
        self._snapshot: Mapping[str, StoredTokens] = {}
        self._fetched_at: dict[str, float] = {}
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._failures = 0
        self._reported: str | None = None
        self._released: dict[str, bool] = {}  # account -> a lease release was announced
        self._closing = False

    @property
    def describe(self) -> str:
        """The settings an operator looks at (password never shown)."""
        return f"token_store.url {self._where}"

    # --- connection, errors, back-off ----------------------------------------------------------

    async def run(self, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run one command; Redis failures become TokenStoreError naming the setting, with back-off."""
        now = time.monotonic()
        if now < self._down_until:
            raise TokenStoreError(f"token_store.url: the token store at {self._where} is unreachable "
                                  f"(next try in {self._down_until - now:.1f} s)")
        try:
            result = await call(self._redis)
        except Exception as exc:
            error = translate(exc, self._where, password_set=self._password_set)
            if error is None:
                raise
            self._failures += 1
            jitter = 0.5 + random.random()  # noqa: S311 - spreads the replicas' retries
            delay = min(BACKOFF_MAX_S, 0.1 * 2 ** min(self._failures, 6) * jitter)
            self._down_until = time.monotonic() + delay
            if self._reported != str(error):
                self._reported = str(error)
                log.error("%s; serving the tokens held in memory", error)
            raise error from None
        if self._failures:
            log.warning("the token store at %s is reachable again", self._where)
        self._failures, self._reported = 0, None
        return result

    async def open(self) -> RedisTokenStore:
        """Check the connection, the password and that every record opens with our key."""
        self._down_until = 0.0
        await self.run(lambda r: r.ping())
        await self.load_all()
        self._start_listener()
        return self

    async def close(self) -> None:
        """Stop the listener and checks, close the connection pool."""
        self._closing = True
        if self._listener is not None:  # redis-py's get_message can swallow a cancel: ask it to stop
            await asyncio.wait({self._listener}, timeout=2 * LISTEN_POLL_S)
        tasks = [t for t in [self._listener, *self._checks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self._listener = None
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # --- records -------------------------------------------------------------------------------

    def _tokens_key(self, account: str) -> str:
        return f"{self.prefix}tokens:{account}"

    def _context(self, account: str, version: int) -> bytes:
        return f"redis|{self._tokens_key(account)}|v{version}".encode()

    def _decode(self, account: str, raw_version: object, blob: object) -> StoredTokens:
        version = int(raw_version) if isinstance(raw_version, (bytes, str)) and raw_version else 0
        if not blob:
            return StoredTokens(None, version)
        where = f"{self._where} key '{self._tokens_key(account)}'"
        plain = unseal(self._key, bytes(blob) if isinstance(blob, (bytes, bytearray)) else b"",
                       self._context(account, version), where, REDIS_FIX)
        tokens = token_set(parse_json(plain, where, REDIS_FIX), where, REDIS_FIX)
        if tokens.account != account:
            raise TokenStoreError(f"the token store {where} holds the record of another account; "
                                  f"{REDIS_FIX}")
        return StoredTokens(tokens, version)

    async def _fetch(self, account: str) -> StoredTokens:
        raw = await self.run(lambda r: r.hmget(self._tokens_key(account), ["v", "blob"]))
        fetched = self._decode(account, raw[0], raw[1])
        held = self._snapshot.get(account)
        if fetched.version == 0 and held is not None and held.tokens is not None and held.version > 0:
            return await self._reseed(account, held.tokens)
        self._install(account, fetched)
        return fetched

    async def _reseed(self, account: str, tokens: TokenSet) -> StoredTokens:
        """Redis lost the record (restarted without persistence): store the tokens held, once."""
        log.warning("the token store at %s lost the tokens of account '%s' (restarted without "
                    "persistence?); storing the ones held in memory again", self._where, account)
        try:
            version = await self._cas(tokens, 0)
        except TokenStoreError:
            return await self._fetch_plain(account)
        return self._snapshot.get(account) or StoredTokens(tokens, version)

    async def _fetch_plain(self, account: str) -> StoredTokens:
        raw = await self.run(lambda r: r.hmget(self._tokens_key(account), ["v", "blob"]))
        fetched = self._decode(account, raw[0], raw[1])
        self._install(account, fetched)
        return fetched

    def _install(self, account: str, stored: StoredTokens) -> None:
        self._fetched_at[account] = time.monotonic()
        if self._snapshot.get(account) == stored:
            return
        snapshot = dict(self._snapshot)
        snapshot[account] = stored
        self._snapshot = snapshot  # one assignment: readers see the old or the new mapping
        self._changed.set()
        self._changed = asyncio.Event()

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, account: str, *, fresh: bool = False) -> TokenSet | None:
        """The account's tokens from memory (``fresh``: from Redis, raising when unreachable)."""
        return (await self.get_versioned(account, fresh=fresh)).tokens

    async def get_versioned(self, account: str, *, fresh: bool = False) -> StoredTokens:
        """Tokens and version; a stale entry is checked in the background (briefly awaited)."""
        held = self._snapshot.get(account)
        if fresh or held is None:
            try:
                return await self._fetch(account)
            except TokenStoreError:
                if fresh or held is None:
                    raise
        age = time.monotonic() - self._fetched_at.get(account, 0.0)
        if age >= self._check_interval_s and account not in self._checks:
            self._checks[account] = asyncio.create_task(self._background_fetch(account))
        task = self._checks.get(account)
        if task is not None:
            await asyncio.wait({task}, timeout=CHECK_WAIT_S)
        return self._snapshot.get(account) or StoredTokens(None, 0)

    async def _background_fetch(self, account: str) -> None:
        try:
            await self._fetch(account)
        except TokenStoreError:
            pass  # logged by run(); the tokens held keep serving
        finally:
            self._checks.pop(account, None)

    async def load_all(self) -> dict[str, TokenSet]:
        """Every stored TokenSet, read from Redis (SCAN)."""
        names = await self.run(self._scan_accounts)
        out: dict[str, TokenSet] = {}
        for name in names:
            stored = await self._fetch(name)
            if stored.tokens is not None:
                out[name] = stored.tokens
        return out

    async def _scan_accounts(self, r: aioredis.Redis) -> list[str]:
        prefix = self._tokens_key("")
        names = []
        async for key in r.scan_iter(match=_glob_escape(prefix) + "*", count=200):
            text = key.decode() if isinstance(key, bytes) else str(key)
            names.append(text[len(prefix):])
        return sorted(names)

    async def list_accounts(self) -> list[str]:
        """Sorted names of the accounts with stored tokens."""
        return sorted(await self.load_all())

    # --- writes --------------------------------------------------------------------------------

    async def _cas(self, tokens: TokenSet | None, expected: int, account: str | None = None) -> int:
        name = account if account is not None else tokens.account if tokens else ""
        new_version = expected + 1
        blob = b"" if tokens is None else seal(self._key, json.dumps(tokens.to_json()).encode(),
                                               self._context(name, new_version))
        result = await self.run(lambda r: r.eval(CAS_SCRIPT, 1, self._tokens_key(name), expected, blob,
                                                 self.channel, name))
        if int(result) != -1:
            current = await self._fetch_plain(name)
            raise VersionConflict(name, expected, current)
        self._install(name, StoredTokens(tokens, new_version))
        return new_version

    async def compare_and_set(self, tokens: TokenSet, expected_version: int) -> int:
        """Store only over ``expected_version`` (fencing); VersionConflict otherwise."""
        return await self._cas(tokens, expected_version)

    async def put(self, tokens: TokenSet) -> int:
        """Replace the account's tokens (read, check it opens with our key, compare-and-set)."""
        for _ in range(5):
            current = await self._fetch_plain(tokens.account)
            with contextlib.suppress(VersionConflict):
                return await self._cas(tokens, current.version)
        raise TokenStoreError(f"the tokens of account '{tokens.account}' keep changing in {self._where}; "
                              "try again")

    async def delete(self, account: str) -> bool:
        """Forget the account (an empty record with the next version); True if it had tokens."""
        current = await self._fetch_plain(account)
        if current.tokens is None:
            return False
        await self._cas(None, current.version, account)
        return True

    # --- lease and change notification ---------------------------------------------------------

    async def try_lease(self, account: str, ttl_s: float) -> Lease | None:
        """``SET lease owner NX PX ttl``: the lease, or None while another replica holds it."""
        key = f"{self.prefix}lease:{account}"
        owner = secrets.token_hex(20)
        won = await self.run(lambda r: r.set(key, owner, nx=True, px=max(1, int(ttl_s * 1000))))
        return RedisLease(self, key, owner, account) if won else None

    async def watch(self, account: str, after_version: int, timeout_s: float) -> StoredTokens | None:
        """Wait for a new version or the lease's release (pub/sub; polling as the fallback)."""
        deadline = time.monotonic() + timeout_s
        lease_key = f"{self.prefix}lease:{account}"
        while True:
            current = self._snapshot.get(account)
            if current is not None and current.version != after_version:
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, WATCH_POLL_S))
                if self._released.pop(account, False):
                    return self._snapshot.get(account) or StoredTokens(None, 0)
                continue
            try:  # poll: the notification may have been lost, or the holder died
                current = await self._fetch(account)
                if current.version != after_version:
                    return current
                if not await self.run(lambda r: r.exists(lease_key)):
                    return current
            except TokenStoreError:
                pass

    def _start_listener(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="token-store-pubsub")

    async def _listen(self) -> None:
        """Follow ``<prefix>events``; reconnect with back-off (watchers poll meanwhile)."""
        delay = 0.2
        while not self._closing:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    if delay > 0.2 or self._failures:  # reconnected: events may have been missed
                        for account in list(self._snapshot):
                            with contextlib.suppress(TokenStoreError):
                                await self._fetch(account)
                    delay = 0.2
                    while not self._closing:
                        message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                        if message is not None:
                            await self._on_event(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any connection failure: retry later
                log.debug("token store notifications interrupted: %s", exc)
            if not self._closing:
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
            delay = min(BACKOFF_MAX_S, delay * 2)

    async def _on_event(self, data: Any) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        account, _, what = text.rpartition(" ")
        if not account:
            return
        if what == "released":
            self._released[account] = True
            self._changed.set()
            self._changed = asyncio.Event()
            return
        with contextlib.suppress(TokenStoreError):
            await self._fetch_plain(account)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

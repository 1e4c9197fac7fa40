"""RedisTokenStore against a real redis-server (loopback, no persistence): encryption at rest,
versions and compare-and-set, the lease, change notification, errors naming the setting, and
degraded mode while the server is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from support.redis_server import RedisServer

from relay.errors import TokenStoreError
from relay.secret import Secret
from relay.tokens.interface import VersionConflict
from relay.tokens.keys import decode_key, generate_key
from relay.tokens.model import TokenSet
from relay.tokens.redis_store import RedisTokenStore

NOW = datetime.now(UTC)


def tokens(account: str = "sales", access: str = "AT-1", refresh: str = "RT-1") -> TokenSet:
    """A TokenSet with recognisable values."""
    return TokenSet(account=account, credentials="sandbox", access_token=Secret(access),
                    expires_at=NOW + timedelta(hours=1), refresh_token=Secret(refresh),
                    scopes=("a",), obtained_at=NOW)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module."""
    srv = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


@pytest.fixture
def key() -> bytes:
    """A fresh AEAD key."""
    return decode_key(generate_key(), "test")


@pytest.fixture
async def prefix(server: RedisServer) -> AsyncIterator[str]:
    """A key prefix of its own per test (the server is shared by the module)."""
    yield f"t{time.monotonic_ns()}:"


async def open_store(server: RedisServer, key: bytes, prefix: str, **kw: object) -> RedisTokenStore:
    """An opened store on the test server."""
    return await RedisTokenStore(server.url, key, key_prefix=prefix, **kw).open()  # type: ignore[arg-type]


async def until(condition: Callable[[], Awaitable[object]], what: str, timeout_s: float = 10) -> None:
    """Poll an async ``condition`` until it is truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.01)


async def subscribers(server: RedisServer, channel: str) -> int:
    """How many connections Redis counts as subscribed to ``channel``."""
    client = aioredis.Redis.from_url(server.url)
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


async def _at_least(count: Awaitable[int], minimum: int) -> bool:
    return await count >= minimum


async def test_round_trip_and_only_ciphertext_in_redis(server: RedisServer, key: bytes, prefix: str) -> None:
    """Tokens written by one store read back in another; Redis holds no token in clear."""
    a, b = await open_store(server, key, prefix), await open_store(server, key, prefix)
    try:
        assert await a.put(tokens()) == 1
        assert await b.get("sales", fresh=True) == tokens()
        raw = aioredis.Redis.from_url(server.url)
        blob: bytes = await raw.hget(f"{prefix}tokens:sales", "blob")  # type: ignore[assignment]
        await raw.aclose()
        assert blob and b"AT-1" not in blob and b"RT-1" not in blob and blob.startswith(b"XO2RTOK")
        assert await b.list_accounts() == ["sales"]
    finally:
        await a.close()
        await b.close()


async def test_compare_and_set_fences_an_older_writer(server: RedisServer, key: bytes, prefix: str) -> None:
    """A write against an old version is refused and the newer tokens stay."""
    a, b = await open_store(server, key, prefix), await open_store(server, key, prefix)
    try:
        v1 = await a.put(tokens(access="AT-1"))
        assert await b.compare_and_set(tokens(access="AT-2"), v1) == v1 + 1
        with pytest.raises(VersionConflict) as info:
            await a.compare_and_set(tokens(access="AT-OLD"), v1)
        assert info.value.current.version == v1 + 1
        got = await a.get("sales", fresh=True)
        assert got is not None and got.access_token == Secret("AT-2")
        assert await a.delete("sales") is True
        with pytest.raises(VersionConflict):  # the deleted record keeps its version
            await b.compare_and_set(tokens(access="AT-3"), v1 + 1)
    finally:
        await a.close()
        await b.close()


async def test_lease_is_exclusive_released_by_owner_and_expires(server: RedisServer, key: bytes,
                                                                prefix: str) -> None:
    """SET NX PX: one holder; release by the owner only; an unreleased lease expires."""
    a, b = await open_store(server, key, prefix), await open_store(server, key, prefix)
    try:
        lease = await a.try_lease("sales", 5)
        assert lease is not None and await b.try_lease("sales", 5) is None
        await lease.release()
        crashed = await b.try_lease("sales", 0.3)  # its holder "crashes": never released
        assert crashed is not None and await a.try_lease("sales", 5) is None
        taken = None

        async def lease_taken() -> bool:
            nonlocal taken
            taken = await a.try_lease("sales", 5)
            return taken is not None

        await until(lease_taken, "the crashed holder's lease to expire", 5)
        assert taken is not None
        await crashed.release()  # compare-and-delete: must not delete the new holder's lease
        assert await b.try_lease("sales", 5) is None
        await taken.release()
    finally:
        await a.close()
        await b.close()


async def test_watch_is_woken_by_another_writer(server: RedisServer, key: bytes, prefix: str) -> None:
    """A waiter learns of another store's write through pub/sub well before the poll fallback."""
    a, b = await open_store(server, key, prefix), await open_store(server, key, prefix)
    try:
        v1 = await a.put(tokens())
        await b.get("sales", fresh=True)
        waiter = asyncio.create_task(b.watch("sales", v1, 10))
        # Both stores follow the events channel before the write (else b could only learn by polling).
        await until(lambda: _at_least(subscribers(server, b.channel), 2), "both stores to subscribe")
        start = time.monotonic()
        await a.compare_and_set(tokens(access="AT-2"), v1)
        got = await asyncio.wait_for(waiter, 5)
        assert got is not None and got.version == v1 + 1 and got.tokens is not None
        assert got.tokens.access_token == Secret("AT-2")
        assert time.monotonic() - start < 1.0
    finally:
        await a.close()
        await b.close()


async def test_record_from_another_key_is_refused_and_not_overwritten(server: RedisServer, key: bytes,
                                                                      prefix: str) -> None:
    """A record sealed with another AEAD key: a clear error naming the key settings, and a put
    from the wrong-key relay overwrites nothing."""
    a = await open_store(server, key, prefix)
    await a.put(tokens())
    await a.close()
    other = decode_key(generate_key(), "test")
    with pytest.raises(TokenStoreError, match="cannot be decrypted: the key is wrong") as info:
        await open_store(server, other, prefix)
    assert "token_store.key_env / key_file" in str(info.value) and server.url in str(info.value)
    wrong = RedisTokenStore(server.url, other, key_prefix=prefix)
    with pytest.raises(TokenStoreError, match="key is wrong"):
        await wrong.put(tokens(access="AT-EVIL"))
    await wrong.close()
    again = await open_store(server, key, prefix)
    got = await again.get("sales", fresh=True)
    await again.close()
    assert got is not None and got.access_token == Secret("AT-1")


async def test_unreachable_and_bad_url_name_the_setting(key: bytes) -> None:
    """Nothing listening, or not a Redis URL: TokenStoreError naming token_store.url."""
    from support.redis_server import free_port

    with pytest.raises(TokenStoreError, match=r"token_store.url: cannot reach Redis at redis://127.0.0.1"):
        await RedisTokenStore(f"redis://127.0.0.1:{free_port()}/0", key).open()
    with pytest.raises(TokenStoreError, match=r"token_store.url: .* is not a Redis URL"):
        RedisTokenStore("http://127.0.0.1:1/0", key)


async def test_password_required_or_wrong_names_the_setting(tmp_path: Path, key: bytes) -> None:
    """A server with requirepass: no password / a wrong one name token_store.password; the right
    one works; the password never appears in the message."""
    srv = RedisServer.start(tmp_path / "pw", password="s3cret-redis-pw")
    try:
        with pytest.raises(TokenStoreError, match=r"token_store.password: .* requires a password"):
            await RedisTokenStore(srv.url, key).open()
        with pytest.raises(TokenStoreError, match=r"token_store.password: .* refused the password") as info:
            await RedisTokenStore(srv.url, key, password="wrong-pw").open()
        assert "wrong-pw" not in str(info.value)
        store = await RedisTokenStore(srv.url, key, password="s3cret-redis-pw").open()
        assert await store.put(tokens()) == 1
        await store.close()
    finally:
        srv.stop()


async def test_down_server_serves_held_tokens_then_reseeds_once(tmp_path: Path, key: bytes) -> None:
    """Redis stopped: held tokens are still served (fresh reads fail with the setting named, the
    lease cannot be taken); restarted empty: the held tokens are stored again, once, by one of
    two replicas."""
    srv = RedisServer.start(tmp_path / "down")
    a = await RedisTokenStore(srv.url, key, check_interval_s=0).open()
    b = await RedisTokenStore(srv.url, key, check_interval_s=0).open()
    try:
        await a.put(tokens())
        assert await b.get("sales", fresh=True) == tokens()
        srv.stop(kill=True)
        for store in (a, b):
            assert await store.get("sales") == tokens()
            with pytest.raises(TokenStoreError, match=r"token_store.url"):
                await store.get("sales", fresh=True)
        srv.start_again()

        async def both_read() -> bool:
            nonlocal got_a, got_b
            try:
                got_a = await a.get_versioned("sales", fresh=True)
                got_b = await b.get_versioned("sales", fresh=True)
            except TokenStoreError:  # still backing off after the outage
                return False
            return True

        got_a = got_b = None
        await until(both_read, "both stores to read from the restarted server")
        assert got_a is not None and got_b is not None
        assert got_a.tokens == got_b.tokens == tokens() and got_a.version == got_b.version == 1
    finally:
        await a.close()
        await b.close()
        srv.stop()

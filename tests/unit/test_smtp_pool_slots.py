"""UpstreamPool slot accounting with fake sessions: the cap, hand-over order, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from relay.config.model import AccountConfig, PoolConfig
from relay.errors import UpstreamBusy, UpstreamUnavailable
from relay.secret import Secret
from relay.smtp.pool import UpstreamPool, _AccountSlots
from relay.smtp.reply import SmtpReply

_NO_SLOTS = _AccountSlots()
ACCOUNT = AccountConfig(name="sales", username="u", password_hash=None, mailbox="s@x.test",
                        credentials="c", smtp=None, pop3=None)


class FakeSession:
    """Stands in for UpstreamSmtpSession: connected until aborted, RSET answers ``rset_code``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.connected = True
        self.looks_idle = True
        self.rset_code = 250
        self.quits = 0

    async def rset(self) -> SmtpReply:
        return SmtpReply.make(self.rset_code, "2.0.0", "OK")

    async def quit(self) -> None:
        self.quits += 1
        self.connected = False

    def abort(self) -> None:
        self.connected = False


class FakeTokens:
    """A TokenSource whose current token the test can change."""

    def __init__(self) -> None:
        self.token = Secret("t1")

    async def get_token(self, account: str) -> Secret:
        return self.token

    async def force_refresh(self, account: str, rejected: Secret | None = None) -> Secret:
        return self.token


class RigPool(UpstreamPool):
    """UpstreamPool with its fake opener and token source at hand."""

    opener: Any
    fake_tokens: FakeTokens


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Let the loop run until ``condition`` holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.001)


def queued(pool: UpstreamPool, count: int) -> Callable[[], bool]:
    """A condition: ``count`` acquirers wait in the account's queue."""
    return lambda: len(pool._accounts.get(ACCOUNT.name, _NO_SLOTS).waiters) == count


def make_pool(max_sessions: int = 2, wait_s: float = 5.0, **kwargs: Any) -> tuple[RigPool, list[Any]]:
    """A pool plus the list of sessions its opener created."""
    tokens = FakeTokens()
    pool = RigPool(PoolConfig(True, max_sessions, 60.0), tokens, wait_timeout_s=wait_s, **kwargs)
    opened: list[Any] = []
    pool.opener = _opener(opened, tokens)
    pool.fake_tokens = tokens
    return pool, opened


def _opener(opened: list[Any], tokens: FakeTokens) -> Any:
    async def open_session(account: AccountConfig) -> tuple[Any, Secret]:
        await asyncio.sleep(0)
        session = FakeSession(len(opened))
        opened.append(session)
        return session, tokens.token
    return open_session


async def test_returned_session_is_lent_again_without_opening():
    """A released session is the next one lent; nothing new is opened."""
    pool, opened = make_pool()
    first = await pool.acquire(ACCOUNT, pool.opener)
    pool.release(first)
    again = await pool.acquire(ACCOUNT, pool.opener)
    assert again is first and len(opened) == 1 and pool.was_reused(again)
    await pool.close()


async def test_waiters_get_returned_sessions_in_arrival_order():
    """At the cap, waiters are served first come, first served, each with a returned session."""
    pool, opened = make_pool(max_sessions=1)
    held = await pool.acquire(ACCOUNT, pool.opener)
    order: list[int] = []

    async def waiter(i: int) -> None:
        session = await pool.acquire(ACCOUNT, pool.opener)
        order.append(i)
        await asyncio.sleep(0)
        pool.release(session)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await until(queued(pool, 3), "three waiters in the queue")
    pool.release(held)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and len(opened) == 1 and pool.sessions("sales") == 1
    await pool.close()


async def test_wait_past_the_timeout_raises_upstream_busy_and_leaks_nothing():
    """A waiter that times out gets UpstreamBusy; the slot count is unchanged."""
    pool, _ = make_pool(max_sessions=1, wait_s=0.05)
    held = await pool.acquire(ACCOUNT, pool.opener)
    with pytest.raises(UpstreamBusy):
        await pool.acquire(ACCOUNT, pool.opener)
    pool.release(held)
    assert pool.sessions("sales") == 1 and pool.idle_sessions("sales") == 1
    await pool.close()


async def test_cancelled_waiter_passes_its_turn_on():
    """A waiter cancelled after being handed a session passes it to the next waiter."""
    pool, opened = make_pool(max_sessions=1)
    held = await pool.acquire(ACCOUNT, pool.opener)
    first = asyncio.create_task(pool.acquire(ACCOUNT, pool.opener))
    second = asyncio.create_task(pool.acquire(ACCOUNT, pool.opener))
    await until(queued(pool, 2), "two waiters in the queue")
    pool.release(held)  # handed to `first` ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) is held
    assert len(opened) == 1 and pool.sessions("sales") == 1
    await pool.close()


async def test_discarded_session_frees_its_slot_for_a_waiter():
    """Discarding a lent session lets a waiter open a new one within the cap."""
    pool, opened = make_pool(max_sessions=1)
    held = await pool.acquire(ACCOUNT, pool.opener)
    waiting = asyncio.create_task(pool.acquire(ACCOUNT, pool.opener))
    await until(queued(pool, 1), "the waiter in the queue")
    pool.discard(held)
    fresh = await asyncio.wait_for(waiting, 1)
    assert fresh is opened[1] and pool.sessions("sales") == 1
    await pool.close()


async def test_failed_open_frees_the_reserved_slot():
    """An opener that fails gives the slot back."""
    pool, _ = make_pool(max_sessions=1)

    async def failing(account: AccountConfig) -> Any:
        raise UpstreamUnavailable("down")

    with pytest.raises(UpstreamUnavailable):
        await pool.acquire(ACCOUNT, failing)
    assert pool.sessions("sales") == 0
    await pool.close()


async def test_idle_session_failing_rset_check_is_replaced():
    """An idle session past the probe threshold that fails RSET is closed and a new one opened."""
    pool, opened = make_pool(probe_after_idle_s=0.0)
    first = await pool.acquire(ACCOUNT, pool.opener)
    pool.release(first)
    opened[0].rset_code = 421
    second = await pool.acquire(ACCOUNT, pool.opener)
    assert second is opened[1] and pool.sessions("sales") == 1
    await pool.close()


async def test_token_change_and_fresh_request_skip_idle_sessions():
    """A replaced token retires idle sessions; fresh=True at the cap makes room by closing one."""
    pool, opened = make_pool(max_sessions=1)
    pool.release(await pool.acquire(ACCOUNT, pool.opener))
    pool.fake_tokens.token = Secret("t2")
    second = await pool.acquire(ACCOUNT, pool.opener)
    assert second is opened[1]
    pool.release(second)
    third = await pool.acquire(ACCOUNT, pool.opener, fresh=True)
    assert third is opened[2] and pool.sessions("sales") == 1
    await pool.close()


async def test_close_quits_idle_sessions_and_refuses_new_loans():
    """close() QUITs idle sessions; acquire afterwards raises UpstreamBusy."""
    pool, opened = make_pool()
    pool.release(await pool.acquire(ACCOUNT, pool.opener))
    await pool.close()
    assert opened[0].quits == 1
    with pytest.raises(UpstreamBusy):
        await pool.acquire(ACCOUNT, pool.opener)


async def test_idle_timeout_sweep_closes_sessions():
    """The background sweep QUITs a session idle past idle_timeout_s."""
    pool, opened = make_pool()
    pool.idle_timeout_s = 0.05
    pool.release(await pool.acquire(ACCOUNT, pool.opener))
    await until(lambda: opened[0].quits == 1, "the sweep to QUIT the idle session")
    assert pool.sessions("sales") == 0
    await pool.close()

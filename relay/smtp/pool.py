"""UpstreamPool: opt-in reuse of authenticated upstream SMTP sessions, bounded per account.

Why: many legacy apps open one connection per message, so without a pool every message pays
connect + STARTTLS + EHLO x2 + AUTH XOAUTH2 + QUIT upstream (7 extra round trips). Providers
also throttle concurrent connections per mailbox (Microsoft: ``432 4.3.2 ... concurrent
connections``), so the pool is the cap too: at most ``max_sessions_per_account`` sessions per
account, lent and idle together. A transaction that finds every slot taken waits for one up to
``wait_timeout_s`` (the upstream connect timeout), then gets `UpstreamBusy` (451 4.3.2).

A session is lent for one transaction (MAIL .. final reply, or RSET) and given back clean. It is
reused most-recently-returned first (so surplus sessions age out) and closed with QUIT:

* after ``idle_timeout_s`` unused (a background sweep);
* when older than ``max_age_s`` (below every provider's access-token lifetime);
* when the account's access token changed since it authenticated: the token manager rotates a
  token ahead of its expiry, so a session never outlives the token it logged in with;
* when it answers neither RSET after a long idle nor a quick liveness look (EOF, stray reply);
* on `close` (server stop).

A session that dies between this check and MAIL is the transaction core's business
(`relay.smtp.transaction`): it discards it and
retries once on a fresh one (``acquire(fresh=True)``), so the client never sees the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.config.model import AccountConfig, PoolConfig
from relay.errors import RelayError, UpstreamBusy
from relay.secret import Secret
from relay.smtp.upstream import UpstreamSmtpSession
from relay.tokens.source import TokenSource

log = logging.getLogger("relay.smtp.pool")

SessionOpener = Callable[[AccountConfig], Awaitable[tuple[UpstreamSmtpSession, Secret]]]
"""Opens a connected, authenticated session for an account; returns it and the token it used."""

# Access tokens live 60-90 min at Microsoft and 60 min at Google: retire sessions well before.
DEFAULT_MAX_AGE_S = 50 * 60.0
# A session idle longer than this is checked with RSET before it is lent again; one returned a
# moment ago is lent as is (its last reply was a clean 250 and a dead one is retried at MAIL).
DEFAULT_PROBE_AFTER_IDLE_S = 2.0
PROBE_TIMEOUT_S = 5.0
QUIT_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Entry:
    """Bookkeeping for one pooled session."""

    session: UpstreamSmtpSession
    account: str
    token: Secret
    created_at: float
    idle_since: float = 0.0
    lends: int = 0


@dataclass(eq=False)
class _AccountSlots:
    """One account's sessions: how many exist (lent, idle or opening), the idle ones, the waiters."""

    total: int = 0
    idle: list[_Entry] = field(default_factory=list)  # most recently returned last
    waiters: deque[asyncio.Future[_Entry | None]] = field(default_factory=deque)


class UpstreamPool:
    """A bounded pool of authenticated upstream SMTP sessions per account (see module docstring)."""

    def __init__(self, config: PoolConfig, tokens: TokenSource, *, wait_timeout_s: float,
                 max_age_s: float = DEFAULT_MAX_AGE_S,
                 probe_after_idle_s: float = DEFAULT_PROBE_AFTER_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max(1, config.max_sessions_per_account)
        self.idle_timeout_s = config.idle_timeout_s
        self.tokens = tokens
        self.wait_timeout_s = wait_timeout_s
        self.max_age_s = max_age_s
        self.probe_after_idle_s = probe_after_idle_s
        self._clock = clock
        self._accounts: dict[str, _AccountSlots] = {}
        self._entries: dict[UpstreamSmtpSession, _Entry] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._idle_changed: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    # --- observation ---------------------------------------------------------------------------

    def sessions(self, account: str) -> int:
        """Sessions of ``account`` that exist now (lent, idle or being opened)."""
        slots = self._accounts.get(account)
        return slots.total if slots else 0

    def idle_sessions(self, account: str) -> int:
        """Idle sessions of ``account``."""
        slots = self._accounts.get(account)
        return len(slots.idle) if slots else 0

    def was_reused(self, session: UpstreamSmtpSession) -> bool:
        """True when ``session`` came from the pool after an earlier transaction (it may be stale)."""
        entry = self._entries.get(session)
        return entry is not None and entry.lends > 1

    # --- lending -------------------------------------------------------------------------------

    async def acquire(self, account: AccountConfig, opener: SessionOpener, *,
                      fresh: bool = False) -> UpstreamSmtpSession:
        """Lend a session for one transaction: a checked idle one, else a new one within the cap,
        else the next one returned (first come, first served). ``fresh`` skips idle sessions (a
        retry after a pooled one died).

        Raises `UpstreamBusy` after ``wait_timeout_s`` at the cap, and whatever ``opener`` raises.
        """
        if self._closed:
            raise UpstreamBusy("the relay is stopping", account=account.name)
        slots = self._accounts.setdefault(account.name, _AccountSlots())
        if not slots.waiters:  # else queue behind them
            if not fresh:
                entry = await self._take_idle(slots, account)
                if entry is not None:
                    return self._lend(entry)
            # The mailbox's session cap (accounts.NAME.max_upstream_sessions) bounds the pool too.
            if slots.total < min(self.max_sessions, account.max_upstream_sessions or self.max_sessions):
                slots.total += 1  # reserved before the await: concurrent callers see the cap
                return await self._open(slots, account, opener)
            if fresh and slots.idle:
                self._retire(slots, slots.idle.pop(0), "making room for a fresh session", free_slot=False)
                return await self._open(slots, account, opener)
        entry = await self._wait_turn(slots, account)
        if entry is not None:
            return self._lend(entry)
        return await self._open(slots, account, opener)  # a slot was reserved for us

    def release(self, session: UpstreamSmtpSession) -> None:
        """Take back a session whose transaction is over (no MAIL open upstream): the first waiter
        gets it, else it goes idle."""
        entry = self._entries.get(session)
        if entry is None:
            session.abort()
            return
        slots = self._accounts[entry.account]
        if self._closed or not session.connected:
            self._retire(slots, entry, "closed")
            return
        waiter = _next_waiter(slots)
        if waiter is not None:
            waiter.set_result(entry)
            return
        entry.idle_since = self._clock()
        slots.idle.append(entry)
        self._ensure_sweeper()

    def discard(self, session: UpstreamSmtpSession) -> None:
        """Forget a lent session that failed or is in an unknown state: abort it, free its slot."""
        entry = self._entries.pop(session, None)
        session.abort()
        if entry is not None:
            self._slot_freed(self._accounts[entry.account])

    async def close(self) -> None:
        """Stop lending, QUIT every idle session and wait (bounded) for the QUITs."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for name, slots in self._accounts.items():
            while slots.idle:
                self._retire(slots, slots.idle.pop(), "relay stopping")
            while (waiter := _next_waiter(slots)) is not None:
                waiter.set_exception(UpstreamBusy("the relay is stopping", account=name))
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=QUIT_TIMEOUT_S + 1)

    # --- internals -----------------------------------------------------------------------------

    def _lend(self, entry: _Entry) -> UpstreamSmtpSession:
        entry.lends += 1
        return entry.session

    async def _open(self, slots: _AccountSlots, account: AccountConfig,
                    opener: SessionOpener) -> UpstreamSmtpSession:
        """Open a session in a slot already counted in ``slots.total``."""
        try:
            session, token = await opener(account)
        except BaseException:
            self._slot_freed(slots)
            raise
        entry = _Entry(session, account.name, token, created_at=self._clock())
        self._entries[session] = entry
        return self._lend(entry)

    async def _wait_turn(self, slots: _AccountSlots, account: AccountConfig) -> _Entry | None:
        """Queue until a returned session (the result) or a reserved slot (None) is handed over."""
        waiter: asyncio.Future[_Entry | None] = asyncio.get_running_loop().create_future()
        slots.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_timeout_s):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return waiter.result()  # handed over just as the time ran out: take it
            raise UpstreamBusy(
                f"all {self.max_sessions} upstream sessions of account {account.name} stayed busy "
                f"for {self.wait_timeout_s:g}s (upstream_pool.max_sessions_per_account)",
                account=account.name) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # cancelled after the handover: pass it on
                if handed is not None:
                    self.release(handed.session)
                else:
                    self._slot_freed(slots)
            raise
        finally:
            with contextlib.suppress(ValueError):
                slots.waiters.remove(waiter)

    def _slot_freed(self, slots: _AccountSlots) -> None:
        """A slot became free: reserve it for the first waiter, if any."""
        slots.total -= 1
        waiter = _next_waiter(slots)
        if waiter is not None:
            slots.total += 1
            waiter.set_result(None)

    async def _take_idle(self, slots: _AccountSlots, account: AccountConfig) -> _Entry | None:
        """Pop idle sessions (newest first) until one passes the checks; retire the others."""
        if not slots.idle:
            return None
        token = await self.tokens.get_token(account.name)
        while slots.idle:
            entry = slots.idle.pop()
            reason = self._retire_reason(entry, self._clock(), token)
            if reason is None and self._clock() - entry.idle_since >= self.probe_after_idle_s:
                try:
                    reason = await self._probe(entry)
                except BaseException:  # cancelled mid-check: the entry must not leak its slot
                    self._retire(slots, entry, "check interrupted")
                    raise
            if reason is None:
                return entry
            self._retire(slots, entry, reason)
        return None

    def _retire_reason(self, entry: _Entry, now: float, token: Secret | None) -> str | None:
        session = entry.session
        if not session.connected or not session.looks_idle:
            return "connection closed or unsolicited reply from the upstream"
        if now - entry.idle_since >= self.idle_timeout_s:
            return f"idle for {self.idle_timeout_s:g}s"
        if now - entry.created_at >= self.max_age_s:
            return f"older than {self.max_age_s:g}s"
        if token is not None and token != entry.token:
            return "the access token it logged in with was replaced"
        return None

    async def _probe(self, entry: _Entry) -> str | None:
        """RSET with a short timeout: None when the session answered 250."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                reply = await entry.session.rset()
        except (RelayError, OSError, TimeoutError) as exc:
            return f"RSET check failed: {exc}"
        return None if reply.code == 250 else f"RSET check answered {reply.one_line()}"

    def _retire(self, slots: _AccountSlots, entry: _Entry, reason: str, *, free_slot: bool = True) -> None:
        """Close a session that is neither lent nor idle any more (QUIT in the background)."""
        self._entries.pop(entry.session, None)
        log.debug("account %s: closing pooled upstream session (%s)", entry.account, reason)
        task = asyncio.get_running_loop().create_task(self._quit(entry.session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if free_slot:
            self._slot_freed(slots)

    @staticmethod
    async def _quit(session: UpstreamSmtpSession) -> None:
        try:
            async with asyncio.timeout(QUIT_TIMEOUT_S):
                await session.quit()
        except TimeoutError:
            pass
        finally:
            session.abort()

    def _ensure_sweeper(self) -> None:
        if self._idle_changed is None:
            self._idle_changed = asyncio.Event()
        self._idle_changed.set()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(),
                                                                   name="smtp-pool-sweeper")

    async def _sweep_forever(self) -> None:
        """Close idle sessions as they pass their idle timeout or maximum age."""
        changed = self._idle_changed
        assert changed is not None
        while True:
            changed.clear()
            due = self._sweep()
            timeout = None if due is None else max(0.0, due - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await changed.wait()

    def _sweep(self) -> float | None:
        """Retire expired idle sessions; return the clock time the next one is due, if any."""
        now = self._clock()
        next_due: float | None = None
        for slots in self._accounts.values():
            for entry in list(slots.idle):
                reason = self._retire_reason(entry, now, None)
                if reason is not None:
                    slots.idle.remove(entry)
                    self._retire(slots, entry, reason)
                    continue
                due = min(entry.idle_since + self.idle_timeout_s, entry.created_at + self.max_age_s)
                next_due = due if next_due is None else min(next_due, due)
        return next_due


def _next_waiter(slots: _AccountSlots) -> asyncio.Future[_Entry | None] | None:
    """Pop the first waiter still waiting (others timed out or were cancelled)."""
    while slots.waiters:
        waiter = slots.waiters.popleft()
        if not waiter.done():
            return waiter
    return None

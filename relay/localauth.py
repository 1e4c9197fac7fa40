"""Local logins for the SMTP and POP3 listeners: who may log in, from where, and how often.

- Passwords are checked against the account's scrypt hash in a worker thread (the event loop never
  blocks). Successful checks are cached under an HMAC with a per-process random key, so an app that
  opens a connection per message pays the KDF once, not per message; a changed hash or password
  misses the cache.
- An unknown username costs the same as a wrong password (a dummy hash of the same cost is
  checked), so timing does not reveal which usernames exist.
- Brute force: every failure is delayed (limits.auth_failure_delay_s) before the caller answers.
  After limits.auth_failures_before_throttle failures within limits.auth_throttle_window_s, the
  client address is throttled: its attempts are refused without a check until the window passes.
  Checks from one address run one at a time, so parallel connections cannot race past the limit.
  A username failing that often (from any addresses) is slowed down: each uncached attempt for it
  waits the delay first, but a correct login from an address that is not throttled still works.
- Every failure counts, also a repeated one: an app retrying a stale password throttles its
  address (and the other apps sharing it) until it is fixed; the WARNING names the address.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from relay.config.model import AccountConfig, ListenerConfig, RelayConfig
from relay.passwords import dummy_hash, verify_password
from relay.sasl import FORBIDDEN_CHARS

log = logging.getLogger("relay.auth")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Verifier = Callable[[str, str], bool]

CACHE_ENTRIES = 4096
TRACKED_KEYS = 50_000
EVENTS_PER_KEY = 1024
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IPAddress | None:
    """Parse an address (dropping an IPv6 zone), unwrapping IPv4-mapped IPv6; None if invalid."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=1024)
def is_loopback(host_or_ip: str) -> bool:
    """True for loopback addresses (127/8, ::1, IPv4-mapped loopback) and the name localhost.

    Cached: it runs for every EHLO and AUTH, mostly on the same few listener and client addresses."""
    if host_or_ip.lower() in LOOPBACK_NAMES:
        return True
    ip = _ip(host_or_ip)
    return ip is not None and ip.is_loopback


class _FailureLog:
    """Failure times per key within a sliding window, bounded in keys and events per key."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str, now: float) -> int:
        """Failures of ``key`` within the window ending at ``now``."""
        events = self._events.get(key)
        if events is None:
            return 0
        while events and now - events[0] >= self.window_s:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def add(self, key: str, now: float) -> int:
        """Record a failure of ``key`` at ``now``; return the count within the window."""
        count = self.count(key, now)
        events = self._events.setdefault(key, deque(maxlen=EVENTS_PER_KEY))
        self._events.move_to_end(key)
        events.append(now)
        while len(self._events) > TRACKED_KEYS:
            self._events.popitem(last=False)
        return min(count + 1, EVENTS_PER_KEY)


class LocalAuthenticator:
    """Checks local logins (used by both listeners); see the module docstring for the policy."""

    def __init__(self, config: RelayConfig, *, clock: Clock | None = None, sleep: Sleep | None = None,
                 verifier: Verifier | None = None) -> None:
        self.config = config
        self._limits = config.limits
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._verify = verifier or verify_password
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._by_address = _FailureLog(self._limits.auth_throttle_window_s)
        self._by_username = _FailureLog(self._limits.auth_throttle_window_s)
        self._gates: dict[str, tuple[asyncio.Lock, int]] = {}
        self._announced: dict[str, float] = {}
        first_hash = next((a.password_hash for a in config.accounts.values() if a.password_hash), None)
        self._dummy_hash = dummy_hash(first_hash)

    async def authenticate(self, username: str, password: str, client_ip: str) -> AccountConfig | None:
        """Return the account for a correct login, else None after the failure delay."""
        address = _address_key(client_ip)
        limit = self._limits.auth_failures_before_throttle
        if self._by_address.count(address, self._clock()) >= limit:
            await self._sleep(self._limits.auth_failure_delay_s)
            return None
        account = self.config.account_by_username(username)
        bad_input = any(ch in FORBIDDEN_CHARS for ch in username + password)
        encoded = account.password_hash if account is not None and not bad_input else None
        cache_key = self._digest(username, password, encoded) if encoded else None
        if cache_key is not None and cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return account
        if self._by_username.count(username, self._clock()) >= limit:
            await self._sleep(self._limits.auth_failure_delay_s)  # this username is under attack
        async with self._gate(address):
            if cache_key is not None and cache_key in self._cache:
                return account  # verified by a login that held the gate before us
            if self._by_address.count(address, self._clock()) >= limit:
                ok = False  # throttled while waiting for the gate: refuse without checking
            else:
                ok = await asyncio.to_thread(self._verify, password, encoded or self._dummy_hash)
                ok = ok and encoded is not None
                if not ok:
                    self._record_failure(username, address)
        if ok and cache_key is not None:
            self._cache[cache_key] = None
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return account
        await self._sleep(self._limits.auth_failure_delay_s)
        return None

    def plaintext_auth_allowed(self, listener: ListenerConfig, client_ip: str, tls_active: bool) -> bool:
        """True when a login may be sent without TLS: TLS is on, the listener is bound to
        loopback, or the client is inside listener.allow_plaintext_auth_from."""
        if tls_active or is_loopback(listener.host):
            return True
        ip = _ip(client_ip)
        return ip is not None and any(ip in net for net in listener.allow_plaintext_auth_from)

    def trusted_account_for(self, client_ip: str) -> AccountConfig | None:
        """The account whose allow_without_auth_from contains ``client_ip`` (first in config order)."""
        ip = _ip(client_ip)
        if ip is None:
            return None
        for account in self.config.accounts.values():
            if any(ip in net for net in account.allow_without_auth_from):
                return account
        return None

    # --- internals ---------------------------------------------------------------------------

    def _digest(self, *parts: str | None) -> bytes:
        """HMAC-SHA256 under the per-process key over ``parts`` (never stores a password)."""
        data = b"\x00".join((p or "").encode("utf-8", "surrogatepass") for p in parts)
        return hmac.new(self._key, data, hashlib.sha256).digest()

    @asynccontextmanager
    async def _gate(self, address: str) -> AsyncIterator[None]:
        """Run the checks of one client address one at a time (entries vanish when unused)."""
        lock, users = self._gates.get(address, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._gates[address] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._gates[address]
            if users <= 1:
                del self._gates[address]
            else:
                self._gates[address] = (lock, users - 1)

    def _record_failure(self, username: str, address: str) -> None:
        now = self._clock()
        limit = self._limits.auth_failures_before_throttle
        by_address = self._by_address.add(address, now)
        by_username = self._by_username.add(username, now)
        shown_user = username.encode("unicode_escape").decode("ascii")[:64]
        window = self._limits.auth_throttle_window_s
        if by_address == limit:
            self._announce(f"address {address}", now,
                           f"throttling logins from {address}: {by_address} failed logins within "
                           f"{window:.0f} s (last user '{shown_user}'); refusing it until the window passes")
        if by_username == limit:
            self._announce(f"user {username}", now,
                           f"slowing down logins for user '{shown_user}': {by_username} failed logins "
                           f"within {window:.0f} s (last from {address})")

    def _announce(self, key: str, now: float, text: str) -> None:
        """Log ``text`` once per key and window (never with a password)."""
        last = self._announced.get(key)
        if last is None or now - last >= self._limits.auth_throttle_window_s:
            if len(self._announced) >= TRACKED_KEYS:
                self._announced.clear()
            self._announced[key] = now
            log.warning("%s", text)


def _address_key(client_ip: str) -> str:
    """The key failures of a client address are counted under (IPv4-mapped folded to IPv4)."""
    ip = _ip(client_ip)
    return str(ip) if ip is not None else client_ip

"""Local logins for the SMTP and POP3 listeners: who may log in, from where, and how often.

- Passwords are checked against the account's scrypt hash in a worker thread (the event loop never
  blocks). Successful checks are cached under an HMAC with a per-process random key, so an app that
  opens a connection per message pays the KDF once, not per message; a changed hash or password
  misses the cache.
- An unknown username costs the same as a wrong password (a dummy hash is checked), so timing does
  not reveal which usernames exist.
- Brute force: every failure is delayed (limits.auth_failure_delay_s). After
  limits.auth_failures_before_throttle failures within limits.auth_throttle_window_s, the client
  address is throttled: its attempts are refused without a check until the window passes. Failures
  against one username from many addresses throttle that username for the addresses that failed,
  while a correct login from an address without failures still succeeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from relay.config.model import AccountConfig, ListenerConfig, RelayConfig
from relay.passwords import hash_password, verify_password
from relay.sasl import FORBIDDEN_CHARS

log = logging.getLogger("relay.auth")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Verifier = Callable[[str, str], bool]

CACHE_ENTRIES = 4096
TRACKED_KEYS = 100_000
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host_or_ip: str) -> bool:
    """True for loopback addresses (127/8, ::1, IPv4-mapped loopback) and the name localhost."""
    if host_or_ip.lower() in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host_or_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _FailureLog:
    """Failure timestamps per key within a sliding window, bounded in the number of keys."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str, now: float) -> int:
        events = self._events.get(key)
        if events is None:
            return 0
        while events and now - events[0] > self.window_s:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def add(self, key: str, now: float) -> int:
        events = self._events.setdefault(key, deque())
        self._events.move_to_end(key)
        events.append(now)
        while len(self._events) > TRACKED_KEYS:
            self._events.popitem(last=False)
        return self.count(key, now)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)


class LocalAuthenticator:
    """Checks local logins (used by both listeners); see the module docstring for the policy."""

    def __init__(self, config: RelayConfig, *, clock: Clock | None = None, sleep: Sleep | None = None,
                 verifier: Verifier | None = None) -> None:
        self.config = config
        self._limits = config.limits
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._verify = verifier or verify_password
        self._cache_key = os.urandom(32)
        self._cache: OrderedDict[bytes, str] = OrderedDict()
        self._by_address = _FailureLog(self._limits.auth_throttle_window_s)
        self._by_username = _FailureLog(self._limits.auth_throttle_window_s)
        self._by_pair = _FailureLog(self._limits.auth_throttle_window_s)
        self._announced: dict[str, float] = {}
        self._dummy_hash = hash_password(os.urandom(16).hex())

    async def authenticate(self, username: str, password: str, client_ip: str) -> AccountConfig | None:
        """Return the account for a correct login, else None after the failure delay."""
        now = self._clock()
        if self._throttled(username, client_ip, now):
            await self._sleep(self._limits.auth_failure_delay_s)
            return None
        account = self.config.account_by_username(username)
        bad_input = any(ch in FORBIDDEN_CHARS for ch in username + password)
        if account is not None and account.password_hash and not bad_input:
            ok = await self._check(username, password, account.password_hash)
        else:
            await asyncio.to_thread(self._verify, password or "x", self._dummy_hash)
            ok = False
        if ok and account is not None:
            self._by_address.clear(client_ip)
            self._by_pair.clear(f"{client_ip}\x00{username}")
            return account
        await self._record_failure(username, client_ip)
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

    async def _check(self, username: str, password: str, encoded: str) -> bool:
        key = hmac.new(self._cache_key, b"\x00".join(
            (username.encode(), password.encode(), encoded.encode())), hashlib.sha256).digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return True
        ok = await asyncio.to_thread(self._verify, password, encoded)
        if ok:
            self._cache[key] = username
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return ok

    def _throttled(self, username: str, client_ip: str, now: float) -> bool:
        limit = self._limits.auth_failures_before_throttle
        if self._by_address.count(client_ip, now) >= limit:
            return True
        # Many failures against this username: throttle it, but only for addresses that failed it.
        return (self._by_username.count(username, now) >= limit
                and self._by_pair.count(f"{client_ip}\x00{username}", now) > 0)

    async def _record_failure(self, username: str, client_ip: str) -> None:
        now = self._clock()
        limit = self._limits.auth_failures_before_throttle
        by_address = self._by_address.add(client_ip, now)
        by_username = self._by_username.add(username, now)
        self._by_pair.add(f"{client_ip}\x00{username}", now)
        shown_user = username.encode("unicode_escape").decode("ascii")[:64]
        if by_address == limit:
            self._announce(f"address {client_ip}", now,
                           f"{by_address} failed logins from {client_ip} (last user '{shown_user}')")
        if by_username == limit:
            self._announce(f"user {username}", now,
                           f"{by_username} failed logins for user '{shown_user}' from several addresses")
        await self._sleep(self._limits.auth_failure_delay_s)

    def _announce(self, key: str, now: float, text: str) -> None:
        last = self._announced.get(key)
        if last is None or now - last > self._limits.auth_throttle_window_s:
            self._announced[key] = now
            if len(self._announced) > TRACKED_KEYS:
                self._announced.clear()
            log.warning("throttling logins: %s within %.0f s", text, self._limits.auth_throttle_window_s)

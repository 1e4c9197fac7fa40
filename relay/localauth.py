"""Local logins for the SMTP and POP3 listeners: who may log in, from where, and how often.

- Passwords are checked against the account's scrypt hash in a worker thread (the event loop never
  blocks). Successful checks are cached under an HMAC with a per-process random key, so an app that
  opens a connection per message pays the KDF once, not per message; a changed hash or password
  misses the cache. Known-good credentials (in that cache) always pass, whatever else happens.
- An unknown username costs the same as a wrong password: a dummy hash with the highest cost among
  the configured hashes is checked, so timing does not reveal which usernames exist.
- Brute force (limits.auth_failures_before_throttle failures within limits.auth_throttle_window_s):
  * failures are counted per (client address, username) and refused per pair: that pair's attempts
    are refused without a check until the window passes. Other usernames from the same address, and
    the same username from other addresses, are not refused;
  * an address with that many failures (any usernames) is only slowed down: its uncached checks run
    one after the other, each after limits.auth_failure_delay_s, never refused;
  * a username with that many failures (from any addresses) is capped: its uncached checks are
    spaced by the delay doubled per further failure (at most MAX_USER_BACKOFF_S), so parallel
    addresses do not multiply the guessing rate; a correct password still passes after the wait;
  * every failure is delayed (limits.auth_failure_delay_s) before the caller answers.
- Addresses: all of 127.0.0.0/8 is one address (any local process can pick any source in it) and
  IPv6 clients count by /64 (one host usually owns a whole /64); IPv4-mapped IPv6 is IPv4.
- Bounded memory: counters are keyed by a keyed digest (never by a client-chosen string of any
  length), unknown usernames share one key, and at most TRACKED_KEYS keys are kept per table.
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
from relay.passwords import ScryptHash, dummy_hash, parse_hash, verify_password
from relay.sasl import FORBIDDEN_CHARS

log = logging.getLogger("relay.auth")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Verifier = Callable[[str, str], bool]

CACHE_ENTRIES = 4096
TRACKED_KEYS = 50_000
EVENTS_PER_KEY = 1024
MAX_USER_BACKOFF_S = 30.0
UNKNOWN_USER = "\x00unknown"  # the one key all unknown usernames are counted under
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_SHOWN_USERNAME_CHARS = 32

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


@functools.lru_cache(maxsize=4096)
def client_key(client_ip: str) -> str:
    """The "one client" a connection's address belongs to, for login and connection limits.

    All of 127.0.0.0/8 is one client (any local process can bind any source address in it), an
    IPv6 address counts by its /64, IPv4-mapped IPv6 is its IPv4 address; anything unparsable is
    kept as it is (truncated)."""
    ip = _ip(client_ip)
    if ip is None:
        return client_ip[:64]
    if isinstance(ip, ipaddress.IPv4Address):
        return str(_LOOPBACK_V4) if ip in _LOOPBACK_V4 else str(ip)
    if ip.is_loopback:
        return "::1"
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def shown_username(username: str, *, known: bool) -> str:
    """A failed login's username as it may appear in a log line.

    Known account usernames are shown (escaped); anything else is only a short digest with its
    length: a password typed into the username field must not land in the logs."""
    if known:
        return "user '" + username[:_SHOWN_USERNAME_CHARS].encode("unicode_escape").decode("ascii") + "'"
    digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"unknown user (sha256 {digest}, {len(username)} chars)"


def strongest_hash(hashes: list[str]) -> str | None:
    """The configured hash with the highest cost (scrypt memory x passes), or None."""
    parsed: list[tuple[int, str]] = []
    for encoded in hashes:
        try:
            params = parse_hash(encoded)
        except ValueError:
            continue
        parsed.append((_cost(params), encoded))
    return max(parsed)[1] if parsed else None


def mixed_cost_warning(config: RelayConfig) -> str | None:
    """A warning for check-config when the accounts' password hashes use different costs."""
    costs: dict[tuple[int, int, int], list[str]] = {}
    for account in config.accounts.values():
        if account.password_hash:
            try:
                params = parse_hash(account.password_hash)
            except ValueError:
                continue
            costs.setdefault((params.log2_n, params.r, params.p), []).append(account.name)
    if len(costs) < 2:
        return None
    groups = "; ".join(f"ln={n},r={r},p={p}: {', '.join(names)}"
                       for (n, r, p), names in sorted(costs.items()))
    return ("accounts' password hashes use different costs (" + groups + "): a login for the cheaper "
            "accounts answers faster, which tells an attacker which usernames exist; re-hash them "
            "with `relay hash-password` so all use the same cost")


def _cost(params: ScryptHash) -> int:
    return (1 << params.log2_n) * params.r * params.p


class _FailureLog:
    """Failure times per key within a sliding window, bounded in keys and events per key."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: OrderedDict[bytes, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def count(self, key: bytes, now: float) -> int:
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

    def add(self, key: bytes, now: float) -> int:
        """Record a failure of ``key`` at ``now``; return the count within the window."""
        count = self.count(key, now)
        events = self._events.setdefault(key, deque(maxlen=EVENTS_PER_KEY))
        self._events.move_to_end(key)
        events.append(now)
        while len(self._events) > TRACKED_KEYS:
            self._events.popitem(last=False)
        return min(count + 1, EVENTS_PER_KEY)


class _Spacer:
    """Spaces attempts per key: each waits ``interval`` after the previous one's turn (bounded)."""

    def __init__(self) -> None:
        self._next: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._next)

    def reserve(self, key: bytes, now: float, interval_s: float) -> float:
        """Reserve the next turn for ``key``; return how long to wait for it."""
        turn = max(now, self._next.get(key, now)) + interval_s
        self._next[key] = turn
        self._next.move_to_end(key)
        while len(self._next) > TRACKED_KEYS:
            self._next.popitem(last=False)
        return turn - now


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
        window = self._limits.auth_throttle_window_s
        self._by_pair = _FailureLog(window)
        self._by_address = _FailureLog(window)
        self._by_username = _FailureLog(window)
        self._address_turns = _Spacer()
        self._username_turns = _Spacer()
        self._gates: dict[bytes, tuple[asyncio.Lock, int]] = {}
        self._announced: OrderedDict[bytes, float] = OrderedDict()
        hashes = [a.password_hash for a in config.accounts.values() if a.password_hash]
        self._dummy_hash = dummy_hash(strongest_hash(hashes))

    async def authenticate(self, username: str, password: str, client_ip: str) -> AccountConfig | None:
        """Return the account for a correct login, else None after the failure delay."""
        account = self.config.account_by_username(username)
        bad_input = any(ch in FORBIDDEN_CHARS for ch in username + password)
        encoded = account.password_hash if account is not None and not bad_input else None
        cache_key = self._digest("ok", username, password, encoded) if encoded else None
        if cache_key is not None and cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return account  # known-good credentials always pass
        address = client_key(client_ip)
        keys = self._keys(address, username if account is not None else UNKNOWN_USER)
        if self._by_pair.count(keys.pair, self._clock()) < self._limits.auth_failures_before_throttle:
            await self._slow_down(keys)
            async with self._gate(keys.pair):
                if cache_key is not None and cache_key in self._cache:
                    return account  # verified by a login that held the gate before us
                ok = await self._check(keys, password, encoded, shown_username(username, known=account
                                                                             is not None), address)
            if ok and cache_key is not None:
                self._remember(cache_key)
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

    def tracked_keys(self) -> int:
        """How many keys the failure tables and spacers hold (for memory-bound tests)."""
        return (len(self._by_pair) + len(self._by_address) + len(self._by_username)
                + len(self._address_turns) + len(self._username_turns) + len(self._announced))

    # --- internals ---------------------------------------------------------------------------

    def _keys(self, address: str, user_key: str) -> _Keys:
        return _Keys(pair=self._digest("pair", address, user_key), address=self._digest("addr", address),
                     username=self._digest("user", user_key))

    async def _slow_down(self, keys: _Keys) -> None:
        """Wait our turn when the address or the username is under attack (never refuses)."""
        limit = self._limits.auth_failures_before_throttle
        delay = self._limits.auth_failure_delay_s
        now = self._clock()
        waits = [0.0]
        if self._by_address.count(keys.address, now) >= limit:
            waits.append(self._address_turns.reserve(keys.address, now, delay))
        user_failures = self._by_username.count(keys.username, now)
        if user_failures >= limit:
            backoff = min(delay * 2.0 ** min(user_failures - limit, 30), MAX_USER_BACKOFF_S)
            waits.append(self._username_turns.reserve(keys.username, now, backoff))
        if max(waits) > 0:
            await self._sleep(max(waits))

    async def _check(self, keys: _Keys, password: str, encoded: str | None, shown_user: str,
                     address: str) -> bool:
        """Run the KDF unless the pair got throttled meanwhile; record a failure."""
        if self._by_pair.count(keys.pair, self._clock()) >= self._limits.auth_failures_before_throttle:
            return False  # throttled while waiting for the gate: refuse without checking
        ok = await asyncio.to_thread(self._verify, password, encoded or self._dummy_hash)
        ok = ok and encoded is not None
        if not ok:
            self._record_failure(keys, shown_user, address)
        return ok

    def _remember(self, cache_key: bytes) -> None:
        self._cache[cache_key] = None
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def _digest(self, *parts: str | None) -> bytes:
        """HMAC-SHA256 under the per-process key over ``parts`` (never stores a password)."""
        data = b"\x00".join((p or "").encode("utf-8", "surrogatepass") for p in parts)
        return hmac.new(self._key, data, hashlib.sha256).digest()

    @asynccontextmanager
    async def _gate(self, key: bytes) -> AsyncIterator[None]:
        """Run the checks of one (address, username) pair one at a time (entries vanish when unused)."""
        lock, users = self._gates.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._gates[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._gates[key]
            if users <= 1:
                del self._gates[key]
            else:
                self._gates[key] = (lock, users - 1)

    def _record_failure(self, keys: _Keys, shown_user: str, address: str) -> None:
        now = self._clock()
        limit = self._limits.auth_failures_before_throttle
        window = self._limits.auth_throttle_window_s
        by_pair = self._by_pair.add(keys.pair, now)
        by_address = self._by_address.add(keys.address, now)
        by_username = self._by_username.add(keys.username, now)
        if by_pair == limit:
            self._announce(keys.pair, now, f"refusing logins for {shown_user} from {address}: {by_pair} "
                           f"failed logins within {window:.0f} s; until the window passes only an "
                           "already verified password for it is accepted")
        if by_address == limit:
            self._announce(keys.address, now, f"slowing down logins from {address}: {by_address} failed "
                           f"logins within {window:.0f} s (last {shown_user})")
        if by_username == limit:
            self._announce(keys.username, now, f"slowing down logins for {shown_user}: {by_username} "
                           f"failed logins within {window:.0f} s (last from {address})")

    def _announce(self, key: bytes, now: float, text: str) -> None:
        """Log ``text`` once per key and window (never with a password)."""
        last = self._announced.get(key)
        if last is None or now - last >= self._limits.auth_throttle_window_s:
            self._announced[key] = now
            self._announced.move_to_end(key)
            while len(self._announced) > TRACKED_KEYS:
                self._announced.popitem(last=False)
            log.warning("%s", text)


class _Keys:
    """The digests one login attempt is counted under."""

    __slots__ = ("address", "pair", "username")

    def __init__(self, *, pair: bytes, address: bytes, username: bytes) -> None:
        self.pair = pair
        self.address = address
        self.username = username

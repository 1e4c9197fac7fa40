"""Unit tests for local logins: verification cache, brute-force throttling, plaintext rules."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from typing import Any

import pytest

from relay.config.model import ListenerConfig, RelayConfig
from relay.configuration import parse_config
from relay.localauth import LocalAuthenticator, is_loopback
from relay.passwords import hash_password, parse_hash, verify_password

HASH = hash_password("right", log2_n=4)


def make_config(**limits: Any) -> RelayConfig:
    """Two accounts; the printer is trusted from 10.1.2.0/24 without a password."""
    return parse_config({
        "token_store": {"key_env": "K"},
        "credentials": {"g": {"provider": "google", "client_id": "x"}},
        "accounts": {
            "sales": {"username": "erp", "password_hash": HASH, "mailbox": "s@example.com",
                      "credentials": "g"},
            "printer": {"username": "scan", "mailbox": "p@example.com", "credentials": "g",
                        "allow_without_auth_from": ["10.1.2.0/24"]},
        },
        "limits": {"auth_failure_delay_s": 0.25, "auth_failures_before_throttle": 3,
                   "auth_throttle_window_s": 60, **limits},
    }, env={})


class Harness:
    """A LocalAuthenticator with a fake clock, a recorded sleep and a counting verifier."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.kdf_calls = 0

        def verifier(password: str, encoded: str) -> bool:
            self.kdf_calls += 1
            return verify_password(password, encoded)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.auth = LocalAuthenticator(make_config(), clock=lambda: self.now, sleep=sleep, verifier=verifier)


@pytest.fixture
def h() -> Harness:
    """A fresh harness."""
    return Harness()


async def test_correct_login_returns_the_account_without_delay(h: Harness) -> None:
    """A correct password returns the account and is not delayed."""
    account = await h.auth.authenticate("erp", "right", "127.0.0.1")
    assert account is not None and account.name == "sales"
    assert h.sleeps == []


async def test_wrong_password_and_unknown_user_fail_after_the_delay(h: Harness) -> None:
    """Wrong password and unknown user both fail after the delay, both running the KDF."""
    assert await h.auth.authenticate("erp", "wrong", "127.0.0.1") is None
    assert await h.auth.authenticate("nobody", "right", "127.0.0.2") is None
    assert h.sleeps == [0.25, 0.25]
    assert h.kdf_calls == 2  # the unknown user was checked against a dummy hash


async def test_successful_verification_is_cached(h: Harness) -> None:
    """Repeated correct logins run the KDF once; a wrong password is never served from the cache."""
    for _ in range(5):
        assert await h.auth.authenticate("erp", "right", "127.0.0.1") is not None
    assert h.kdf_calls == 1
    assert await h.auth.authenticate("erp", "Right", "127.0.0.1") is None
    assert h.kdf_calls == 2


async def test_control_characters_never_match(h: Harness) -> None:
    """Usernames or passwords with CR, LF, NUL or ^A fail."""
    assert await h.auth.authenticate("erp", "right\r\n", "127.0.0.1") is None
    assert await h.auth.authenticate("erp\x01", "right", "127.0.0.1") is None


async def test_pair_is_refused_but_other_users_and_addresses_are_not(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """After N failures an (address, username) pair is refused even with the right (uncached)
    password; the same user from another address and another user from the same address work."""
    caplog.set_level(logging.WARNING, logger="relay.auth")
    for guess in ("guess1", "guess2", "guess3"):
        assert await h.auth.authenticate("erp", guess, "192.0.2.9") is None
    calls = h.kdf_calls
    assert await h.auth.authenticate("erp", "right", "192.0.2.9") is None
    assert await h.auth.authenticate("erp", "right", "::ffff:192.0.2.9") is None  # same address
    assert h.kdf_calls == calls  # refused without checking
    assert h.sleeps[-2:] == [0.25, 0.25]  # every refusal is delayed too
    assert await h.auth.authenticate("erp", "right", "192.0.2.10") is not None
    refusing = "refusing logins for user 'erp' from 192.0.2.9"
    warnings = [r for r in caplog.records if refusing in r.getMessage()]
    assert len(warnings) == 1
    assert "guess" not in caplog.text and "right" not in caplog.text
    h.now += 61  # the window passes
    assert await h.auth.authenticate("erp", "right", "192.0.2.9") is not None


async def test_known_good_login_passes_while_the_address_is_under_attack(h: Harness) -> None:
    """Issue 22 item 1: a password verified before passes at once although the shared local
    address has just failed many logins (any usernames) - one local process cannot lock all out."""
    assert await h.auth.authenticate("erp", "right", "127.0.0.1") is not None
    for i in range(10):
        assert await h.auth.authenticate(f"intruder{i}", "guess", "127.0.0.1") is None
    h.sleeps.clear()
    calls = h.kdf_calls
    for _ in range(14):
        assert await h.auth.authenticate("erp", "right", "127.0.0.1") is not None
    assert h.sleeps == [] and h.kdf_calls == calls


async def test_uncached_correct_login_from_an_attacked_address_is_slowed_not_refused(h: Harness) -> None:
    """Issue 22 item 1: an address under attack is only slowed down: a correct password never seen
    before still passes (after the delay)."""
    for i in range(5):
        assert await h.auth.authenticate(f"intruder{i}", "guess", "127.0.0.1") is None
    h.sleeps.clear()
    assert await h.auth.authenticate("erp", "right", "127.0.0.1") is not None
    assert h.sleeps == [0.25]


@pytest.mark.parametrize(("sources", "other"), [
    (["127.0.0.2", "127.3.4.5", "127.200.0.9"], "127.0.0.77"),
    (["2001:db8::1", "2001:db8::2:3", "2001:db8::ffff:1"], "2001:db8::abcd"),
])
async def test_loopback_counts_as_one_address_and_ipv6_by_64(h: Harness, sources: list[str],
                                                              other: str) -> None:
    """Issue 22 item 1: rotating the source inside 127.0.0.0/8 or one IPv6 /64 does not buy more
    guesses: the fourth source is refused like the first."""
    for i, source in enumerate(sources):
        assert await h.auth.authenticate("erp", f"guess{i}", source) is None
    calls = h.kdf_calls
    assert await h.auth.authenticate("erp", "right", other) is None
    assert h.kdf_calls == calls


async def test_username_cap_spaces_parallel_addresses_with_exponential_backoff(h: Harness) -> None:
    """Issue 22 item 1: once a username failed N times, its checks from parallel addresses are
    spaced one after the other, and the spacing doubles with every further failure."""
    for i in range(3):
        assert await h.auth.authenticate("erp", f"guess{i}", f"198.51.100.{i}") is None
    h.sleeps.clear()
    results = await asyncio.gather(*(h.auth.authenticate("erp", f"more{i}", f"203.0.113.{i}")
                                     for i in range(5)))
    assert results == [None] * 5
    waits = sorted(s for s in h.sleeps if s != 0.25)
    assert waits == [0.5, 0.75, 1.0, 1.25], h.sleeps  # spaced, not all at once
    h.sleeps.clear()
    assert await h.auth.authenticate("erp", "right", "203.0.113.200") is not None
    assert h.sleeps == [1.25 + 0.25 * 2 ** 5]  # 8 failures: 2^5 times the delay after the last turn


async def test_failure_tracking_is_bounded_and_keyed_by_digest() -> None:
    """Issue 22 item 5: huge unknown usernames are tracked under one fixed-size key, never stored."""
    async def no_sleep(seconds: float) -> None:
        return None

    auth = LocalAuthenticator(make_config(), sleep=no_sleep, verifier=lambda p, e: False)
    for i in range(200):
        assert await auth.authenticate(f"{i}-" + "x" * 20_000, "guess", f"192.0.2.{i % 250}") is None
    users = auth._by_username._events
    assert len(users) == 1
    assert all(isinstance(k, bytes) and len(k) == 32 for k in users)


async def test_unknown_users_use_the_highest_configured_cost() -> None:
    """Issue 22 item 13: with mixed hash costs, an unknown username costs as much as the most
    expensive account, so timing does not tell which usernames exist."""
    cheap, dear = hash_password("a", log2_n=4), hash_password("b", log2_n=6)
    config = parse_config({
        "token_store": {"key_env": "K"},
        "credentials": {"g": {"provider": "google", "client_id": "x"}},
        "accounts": {name: {"username": name, "password_hash": hashed, "mailbox": f"{name}@example.com",
                            "credentials": "g"} for name, hashed in (("cheap", cheap), ("dear", dear))},
    }, env={})
    seen: list[str] = []

    def verifier(password: str, encoded: str) -> bool:
        seen.append(encoded)
        return False

    async def no_sleep(seconds: float) -> None:
        return None

    auth = LocalAuthenticator(config, sleep=no_sleep, verifier=verifier)
    assert await auth.authenticate("nobody", "x", "127.0.0.1") is None
    assert parse_hash(seen[0]).log2_n == 6


async def test_repeating_one_wrong_password_also_throttles(h: Harness) -> None:
    """Every failure counts, also the same stale password again; each one is delayed."""
    for _ in range(3):
        assert await h.auth.authenticate("erp", "stale", "127.0.0.1") is None
    assert h.sleeps == [0.25] * 3
    assert await h.auth.authenticate("erp", "right", "127.0.0.1") is None


async def test_successful_login_does_not_reset_the_address_count(h: Harness) -> None:
    """A known-good login between guesses does not buy an attacker more guesses."""
    for guess in ("g1", "g2"):
        assert await h.auth.authenticate("erp", guess, "192.0.2.50") is None
    assert await h.auth.authenticate("erp", "right", "192.0.2.50") is not None
    assert await h.auth.authenticate("erp", "g3", "192.0.2.50") is None
    calls = h.kdf_calls
    assert await h.auth.authenticate("erp", "g4", "192.0.2.50") is None
    assert h.kdf_calls == calls


async def test_username_attacked_from_many_addresses_is_slowed_not_locked(h: Harness,
                                                                          caplog: pytest.LogCaptureFixture
                                                                          ) -> None:
    """Failures for one username from many addresses delay its checks; a correct login still works."""
    caplog.set_level(logging.WARNING, logger="relay.auth")
    for i in range(3):
        assert await h.auth.authenticate("erp", f"guess{i}", f"198.51.100.{i}") is None
    assert h.sleeps == [0.25] * 3
    assert "slowing down logins for user 'erp'" in caplog.text
    assert await h.auth.authenticate("erp", "right", "203.0.113.7") is not None
    assert h.sleeps == [0.25] * 4  # the correct login waited once before its check
    assert await h.auth.authenticate("erp", "right", "198.51.100.0") is not None  # cached: no wait
    assert h.sleeps == [0.25] * 4


async def test_parallel_guesses_from_one_address_stop_at_the_limit() -> None:
    """Concurrent attempts from one address are checked one at a time, so at most N run the KDF."""
    calls = 0

    def verifier(password: str, encoded: str) -> bool:
        nonlocal calls
        calls += 1
        return verify_password(password, encoded)

    async def no_sleep(seconds: float) -> None:
        return None

    auth = LocalAuthenticator(make_config(), sleep=no_sleep, verifier=verifier)
    results = await asyncio.gather(*(auth.authenticate("erp", f"guess{i}", "192.0.2.77")
                                     for i in range(12)))
    assert results == [None] * 12
    assert calls == 3


async def test_burst_of_correct_logins_from_one_address_runs_the_kdf_once() -> None:
    """1000 apps logging in at once from one address wait for one KDF run, not one each."""
    calls = 0

    def verifier(password: str, encoded: str) -> bool:
        nonlocal calls
        calls += 1
        return verify_password(password, encoded)

    auth = LocalAuthenticator(make_config(), verifier=verifier)
    results = await asyncio.gather(*(auth.authenticate("erp", "right", "127.0.0.1") for _ in range(1000)))
    assert all(r is not None and r.name == "sales" for r in results)
    assert calls == 1


async def test_unknown_user_is_checked_against_a_hash_of_the_same_cost(h: Harness) -> None:
    """The dummy hash for unknown users has the cost of the configured hashes."""
    seen: list[str] = []

    def verifier(password: str, encoded: str) -> bool:
        seen.append(encoded)
        return verify_password(password, encoded)

    auth = LocalAuthenticator(make_config(), sleep=h.auth._sleep, verifier=verifier)
    assert await auth.authenticate("nobody", "right", "127.0.0.1") is None
    assert await auth.authenticate("scan", "right", "127.0.0.1") is None  # account without password
    costs = [(c.log2_n, c.r, c.p, len(c.digest)) for c in map(parse_hash, [*seen, HASH])]
    assert costs == [costs[-1]] * 3
    assert HASH not in seen


def listener(host: str, nets: tuple[str, ...] = ()) -> ListenerConfig:
    """A listener on ``host`` allowing plaintext from ``nets``."""
    return ListenerConfig(enabled=True, host=host, port=25,
                          allow_plaintext_auth_from=tuple(ipaddress.ip_network(n) for n in nets))


@pytest.mark.parametrize(("host", "nets", "client", "tls", "allowed"), [
    ("127.0.0.1", (), "127.0.0.1", False, True),
    ("localhost", (), "127.0.0.1", False, True),
    ("::1", (), "::1", False, True),
    ("0.0.0.0", (), "127.0.0.1", False, False),
    ("0.0.0.0", (), "203.0.113.5", True, True),
    ("0.0.0.0", ("172.16.0.0/12",), "172.18.0.4", False, True),
    ("0.0.0.0", ("172.16.0.0/12",), "::ffff:172.18.0.4", False, True),
    ("0.0.0.0", ("172.16.0.0/12",), "10.0.0.4", False, False),
])
def test_plaintext_auth_rule(h: Harness, host: str, nets: tuple[str, ...], client: str, tls: bool,
                             allowed: bool) -> None:
    """Plaintext AUTH only with TLS, on a loopback listener, or from an allowed network."""
    assert h.auth.plaintext_auth_allowed(listener(host, nets), client, tls) is allowed


def test_trusted_clients_map_to_their_account(h: Harness) -> None:
    """A client inside allow_without_auth_from maps to that account; others to none."""
    trusted = h.auth.trusted_account_for("10.1.2.3")
    assert trusted is not None and trusted.name == "printer"
    assert h.auth.trusted_account_for("10.1.3.3") is None
    assert h.auth.trusted_account_for("garbage") is None


def test_is_loopback() -> None:
    """Loopback detection covers 127/8, ::1, v4-mapped loopback and localhost."""
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "example.com", "::"]))


async def test_config_change_invalidates_the_cache() -> None:
    """A new hash for the same user misses the cache (no stale acceptance after a password change)."""
    config = make_config()
    auth = LocalAuthenticator(config)
    assert await auth.authenticate("erp", "right", "127.0.0.1") is not None
    new_hash = hash_password("new", log2_n=4)
    accounts = dict(config.accounts)
    accounts["sales"] = dataclasses.replace(accounts["sales"], password_hash=new_hash)
    auth.config = dataclasses.replace(config, accounts=accounts)
    assert await auth.authenticate("erp", "right", "127.0.0.1") is None

"""Security: brute force against the live SMTP and POP3 listeners (real LocalAuthenticator).

Clients bind 127.0.0.2 ... 127.0.0.9 as their source address, so the relay sees distinct client
addresses over loopback.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from relay.sasl import encode_plain

from .conftest import PASSWORD, TIMEOUT_S, USERNAME, Raw, Relay, fast_limits

DELAY_S = 0.3
LIMIT = 3


class SourcedRaw(Raw):
    """Raw line client whose socket is bound to ``source`` (a loopback address)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S,
                                             source_address=(source, 0))
        self.buffer = b""


def login(relay: Relay, listener: str, source: str, username: str, password: str) -> tuple[bool, float]:
    """One login attempt on a new connection from ``source``: (accepted, seconds it took)."""
    port = relay.smtp_port if listener == "smtp" else relay.pop3_port
    client = SourcedRaw(port, source)
    try:
        if listener == "smtp":
            assert client.smtp_reply().startswith("220")
            assert client.smtp("EHLO brute.test").startswith("250")
            started = time.monotonic()
            reply = client.smtp(f"AUTH PLAIN {encode_plain(username, password)}")
            took = time.monotonic() - started
            assert reply[:3] in ("235", "535"), reply
            accepted = reply.startswith("235")
            client.smtp("QUIT")
        else:
            assert client.line().startswith(b"+OK")
            client.send(f"USER {username}\r\n".encode())
            assert client.line().startswith(b"+OK")
            started = time.monotonic()
            client.send(f"PASS {password}\r\n".encode())
            reply = client.line()
            took = time.monotonic() - started
            assert reply.startswith((b"+OK", b"-ERR [AUTH]")), reply
            accepted = reply.startswith(b"+OK")
            client.send(b"QUIT\r\n")
            client.line()
    finally:
        client.close()
    return accepted, took


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "relay.auth"]


@pytest.mark.parametrize("listener", ["smtp", "pop3"])
def test_failures_are_delayed_then_the_address_is_throttled(rel_relay, sandbox, caplog, listener):
    """Wrong logins are answered only after the delay; after the limit the address is refused even
    with the right password, a WARNING names the address (never a password), and a correct login
    from another address still succeeds."""
    caplog.set_level(logging.INFO)
    relay = rel_relay(limits=fast_limits(auth_failure_delay_s=DELAY_S, auth_failures_before_throttle=LIMIT))
    guesses = [f"guess-{listener}-{i}-Zq9" for i in range(LIMIT)]
    for i, guess in enumerate(guesses):  # distinct usernames: only the address limit is reached
        accepted, took = login(relay, listener, "127.0.0.2", f"intruder{i}", guess)
        assert not accepted and took >= DELAY_S
    accepted, took = login(relay, listener, "127.0.0.2", USERNAME, PASSWORD)
    assert not accepted, "a throttled address must be refused even with the right password"
    assert took >= DELAY_S
    throttled = [m for m in _warnings(caplog) if "127.0.0.2" in m]
    assert len(throttled) == 1 and "throttling" in throttled[0]
    everything = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in [*guesses, PASSWORD]:
        assert secret not in everything
    accepted, _ = login(relay, listener, "127.0.0.3", USERNAME, PASSWORD)
    assert accepted, "a correct login from another address must not be blocked"


@pytest.mark.parametrize("listener", ["smtp", "pop3"])
def test_username_attacked_from_many_addresses_is_slowed_not_locked(rel_relay, sandbox, caplog, listener):
    """Failures for one username spread over several addresses (none throttled) slow that username
    down: a correct login from a clean address still succeeds but waits the delay first, and a
    further wrong guess waits the slow-down plus the failure delay."""
    relay = rel_relay(limits=fast_limits(auth_failure_delay_s=DELAY_S, auth_failures_before_throttle=LIMIT))
    for i in range(LIMIT):
        accepted, took = login(relay, listener, f"127.0.0.{2 + i}", USERNAME, f"wrong-{i}")
        assert not accepted and took >= DELAY_S
    slowed = [m for m in _warnings(caplog) if f"user '{USERNAME}'" in m]
    assert len(slowed) == 1 and "slowing down" in slowed[0]
    accepted, took = login(relay, listener, "127.0.0.8", USERNAME, PASSWORD)
    assert accepted, "the attacked username must not be locked out"
    assert took >= DELAY_S, "an attacked username is slowed down"
    accepted, took = login(relay, listener, "127.0.0.9", USERNAME, "wrong-again")
    assert not accepted and took >= 2 * DELAY_S

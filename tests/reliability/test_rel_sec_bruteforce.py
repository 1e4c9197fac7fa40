"""Security: brute force against the live SMTP and POP3 listeners (real LocalAuthenticator).

Clients bind 127.0.0.2 ... 127.0.0.9 as their source address; the relay counts all of
127.0.0.0/8 as one address (issue 22 item 1).
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
def test_local_attacker_cannot_lock_out_a_known_good_login(rel_relay, sandbox, caplog, listener):
    """Issue 22 item 1: another local process failing logins (any usernames, including the app's)
    never makes the relay refuse the app's verified password; a WARNING names the address and
    never a password or an unknown username."""
    caplog.set_level(logging.INFO)
    relay = rel_relay(limits=fast_limits(auth_failure_delay_s=DELAY_S, auth_failures_before_throttle=LIMIT))
    accepted, _ = login(relay, listener, "127.0.0.1", USERNAME, PASSWORD)
    assert accepted
    guesses = [f"guess-{listener}-{i}-Zq9" for i in range(2 * LIMIT)]
    for i, guess in enumerate(guesses):
        user = USERNAME if i % 2 else f"intruder{i}-{guess}"
        accepted, took = login(relay, listener, "127.0.0.2", user, guess)
        assert not accepted and took >= DELAY_S
    for _ in range(4):
        accepted, took = login(relay, listener, "127.0.0.1", USERNAME, PASSWORD)
        assert accepted, "a verified password must pass while the address is under attack"
        assert took < DELAY_S
    slowed = [m for m in _warnings(caplog) if m.startswith("slowing down logins from 127.0.0.0/8")]
    assert len(slowed) == 1
    everything = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in [*guesses, PASSWORD]:
        assert secret not in everything


@pytest.mark.parametrize("listener", ["smtp", "pop3"])
def test_rotating_loopback_sources_does_not_buy_guesses(rel_relay, sandbox, listener):
    """Issue 22 item 1: guesses from 127.0.0.2, .3, .4 count as one address: the correct password
    guessed from a fourth source is refused (the pair is throttled)."""
    relay = rel_relay(limits=fast_limits(auth_failure_delay_s=DELAY_S, auth_failures_before_throttle=LIMIT))
    for i in range(LIMIT):
        accepted, _ = login(relay, listener, f"127.0.0.{2 + i}", USERNAME, f"wrong-{i}")
        assert not accepted
    accepted, took = login(relay, listener, "127.0.1.9", USERNAME, PASSWORD)
    assert not accepted and took >= DELAY_S


# A username attacked from many addresses (slowed, never locked) needs distinct client addresses,
# which loopback cannot give any more (127.0.0.0/8 is one address): tests/unit/test_localauth.py.

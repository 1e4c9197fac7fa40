"""The POP3 proxy answers bad input, idle clients, overload and TLS rules without losing step."""

from __future__ import annotations

import base64
import ipaddress
import poplib
import socket
import ssl
import time

import pytest
from support.app_harness import wait_until

from relay.config.model import ListenerConfig
from relay.tlsutil import generate_self_signed

from .conftest import PASSWORD, mailbox, with_limits


def test_bad_input_gets_errors_and_the_session_stays_usable(pop3_relay, sandbox):
    """Overlong lines, junk, wrong state, PASS first, bad base64, control characters: -ERR each."""
    sandbox.pop3.deliver(mailbox(0), b"Subject: x\r\n\r\nhi\r\n")
    relay = pop3_relay()
    raw = relay.raw()
    assert raw.greeting.startswith(b"+OK")
    assert raw.cmd(b"X" * 5000) == b"-ERR Line too long\r\n"
    assert raw.cmd(b"\x00\xff\xfe\x80 junk") == b"-ERR Command is not valid UTF-8\r\n"
    assert raw.cmd(b"FROB") == b"-ERR Unknown command\r\n"
    assert raw.cmd(b"RETR 1") == b"-ERR RETR is not allowed before login\r\n"
    assert raw.cmd(b"PASS " + PASSWORD.encode()) == b"-ERR Send USER before PASS\r\n"
    assert raw.cmd(b"AUTH PLAIN %%%not-base64") == b"-ERR AUTH PLAIN response is not valid base64\r\n"
    bad_plain = base64.b64encode(b"\x00app0\x00pass\x01word")
    assert raw.cmd(b"AUTH PLAIN " + bad_plain).startswith(b"-ERR password contains a forbidden")
    assert raw.cmd(b"USER app\x010").startswith(b"-ERR user name contains a forbidden")
    assert raw.cmd(b"AUTH PLAIN") == b"+ \r\n"
    assert raw.cmd(b"*") == b"-ERR Authentication cancelled\r\n"
    plain = base64.b64encode(f"\0app0\0{PASSWORD}".encode())
    assert raw.cmd(b"AUTH PLAIN " + plain) == b"+OK User successfully authenticated.\r\n"
    assert raw.cmd(b"USER app0") == b"-ERR USER is not allowed after login\r\n"
    assert raw.cmd(b"RETR x") == b"-ERR Syntax error in RETR arguments\r\n"
    assert raw.cmd(b"STAT " + b"9" * 300) == b"-ERR Line too long\r\n"
    assert raw.cmd(b"STAT").startswith(b"+OK 1 ")
    assert raw.cmd(b"QUIT").startswith(b"+OK")
    assert sandbox.pop3.counters.get("auth_ok") == 1


def test_wrong_password_is_refused_with_auth_code_after_a_delay(pop3_relay):
    """A wrong password gets `-ERR [AUTH] Invalid credentials`, delayed by the authenticator."""
    relay = pop3_relay(limits=with_limits(auth_failure_delay_s=0.3))
    raw = relay.raw()
    raw.cmd(b"USER app0")
    started = time.monotonic()
    assert raw.cmd(b"PASS wrong") == b"-ERR [AUTH] Invalid credentials\r\n"
    assert time.monotonic() - started >= 0.25
    raw.cmd(b"USER nobody")
    assert raw.cmd(b"PASS " + PASSWORD.encode()) == b"-ERR [AUTH] Invalid credentials\r\n"
    raw.cmd(b"USER app0")
    assert raw.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
    raw.cmd(b"QUIT")
    raw.close()


def test_repeated_failures_throttle_even_the_right_password(pop3_relay, sandbox):
    """After the configured number of failures the address is throttled: no login, no upstream."""
    relay = pop3_relay(limits=with_limits(auth_failures_before_throttle=3))
    raw = relay.raw()
    for _ in range(3):
        raw.cmd(b"USER app0")
        assert raw.cmd(b"PASS guess") == b"-ERR [AUTH] Invalid credentials\r\n"
    raw.cmd(b"USER app0")
    assert raw.cmd(b"PASS " + PASSWORD.encode()) == b"-ERR [AUTH] Invalid credentials\r\n"
    assert raw.cmd(b"NOOP") == b"-ERR NOOP is not allowed before login\r\n"  # still in step
    raw.cmd(b"QUIT")
    raw.close()
    assert sandbox.pop3.counters.get("connections", 0) == 0  # the upstream was never contacted


def test_idle_client_is_disconnected_without_committing_deletions(pop3_relay, sandbox):
    """With a short idle timeout the relay says so, closes, and the pending DELE is not applied."""
    sandbox.pop3.deliver(mailbox(0), b"Subject: x\r\n\r\nhi\r\n")
    relay = pop3_relay(limits=with_limits(pop3_idle_timeout_s=0.5))
    raw = relay.raw()
    raw.cmd(b"USER app0")
    assert raw.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
    assert raw.cmd(b"DELE 1").startswith(b"+OK")
    assert raw.line() == b"-ERR [SYS/TEMP] Disconnected for inactivity\r\n"  # blocks until timeout
    assert raw.closed_by_server()
    relay.wait_unlocked()
    assert len(sandbox.pop3.mailbox(mailbox(0))) == 1
    assert sandbox.pop3.counters.get("quit_update", 0) == 0


def test_connections_over_the_limit_are_refused_with_sys_temp(pop3_relay):
    """Beyond limits.max_connections a client gets `-ERR [SYS/TEMP] ...` and is disconnected."""
    relay = pop3_relay(limits=with_limits(max_connections=2))
    first, second = relay.raw(), relay.raw()
    assert first.greeting.startswith(b"+OK") and second.greeting.startswith(b"+OK")
    third = relay.raw()
    assert third.greeting.startswith(b"-ERR [SYS/TEMP] Too many connections")
    assert third.closed_by_server()
    first.cmd(b"QUIT")
    first.close()
    # The freed slot is reusable once the server noticed the close (asynchronously).
    wait_until(lambda: relay.active_sessions() == 1, 30, "the closed connection to free its slot")
    again = relay.raw()
    assert again.greeting.startswith(b"+OK")
    again.close()
    second.close()


def test_stls_on_the_local_listener(pop3_relay, sandbox, tmp_path):
    """With tls: starttls the listener offers STLS; poplib upgrades, verifies and reads mail."""
    sandbox.pop3.deliver(mailbox(0), b"Subject: tls\r\n\r\nsecret mail\r\n")
    cert, key = generate_self_signed(tmp_path / "listener")
    relay = pop3_relay(listener=ListenerConfig(True, "127.0.0.1", 0, tls="starttls",
                                               cert_file=cert, key_file=key))
    client = poplib.POP3("127.0.0.1", relay.port, timeout=30)
    assert "STLS" in client.capa()
    client.stls(ssl.create_default_context(cafile=str(cert)))
    assert "STLS" not in client.capa()
    client.user("app0")
    client.pass_(PASSWORD)
    assert client.retr(1)[1][-1] == b"secret mail"
    client.quit()


@pytest.mark.parametrize("segments", [1, 2])
def test_stls_discards_pipelined_plaintext_commands(pop3_relay, tmp_path, segments):
    """Commands pipelined behind STLS are never executed (RFC 2595 injection defence).

    Sent as a second segment they are either dropped or break the handshake; never obeyed.
    """
    cert, key = generate_self_signed(tmp_path / "listener")
    relay = pop3_relay(listener=ListenerConfig(True, "127.0.0.1", 0, tls="starttls",
                                               cert_file=cert, key_file=key))
    raw = relay.raw()
    if segments == 1:
        raw.send(b"STLS\r\nUSER app0\r\n")
    else:
        raw.send(b"STLS\r\n")
        raw.send(b"USER app0\r\n")
    assert raw.line() == b"+OK Begin TLS negotiation now\r\n"
    context = ssl.create_default_context(cafile=str(cert))
    try:
        tls = context.wrap_socket(raw.sock, server_hostname="localhost")
    except (ssl.SSLError, OSError):
        assert segments == 2  # the injected bytes reached the TLS layer and spoiled it: safe
        return
    tls.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
    assert tls.recv(1000) == b"-ERR Send USER before PASS\r\n"
    tls.close()


def test_tls_on_connect_listener(pop3_relay, sandbox, tmp_path):
    """With tls: implicit the listener speaks TLS from the first byte and hides STLS."""
    sandbox.pop3.deliver(mailbox(0), b"Subject: tls\r\n\r\nbody\r\n")
    cert, key = generate_self_signed(tmp_path / "listener")
    relay = pop3_relay(listener=ListenerConfig(True, "127.0.0.1", 0, tls="implicit",
                                               cert_file=cert, key_file=key))
    client = poplib.POP3_SSL("127.0.0.1", relay.port, timeout=30,
                             context=ssl.create_default_context(cafile=str(cert)))
    assert "STLS" not in client.capa()
    client.user("app0")
    client.pass_(PASSWORD)
    assert client.stat()[0] == 1
    client.quit()


def non_loopback_ipv4() -> str | None:
    """This machine's outward IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_plaintext_login_needs_tls_off_loopback(pop3_relay, sandbox, tmp_path):
    """A client off loopback cannot log in before STLS (`-ERR [AUTH] ... TLS required`), after it can."""
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    cert, key = generate_self_signed(tmp_path / "listener", ("localhost", address))
    relay = pop3_relay(listener=ListenerConfig(True, address, 0, tls="starttls",
                                               cert_file=cert, key_file=key))
    client = poplib.POP3(address, relay.port, timeout=30)
    capabilities = client.capa()
    assert "STLS" in capabilities and "USER" not in capabilities and "SASL" not in capabilities
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\].*TLS required"):
        client.user("app0")
    client.stls(ssl.create_default_context(cafile=str(cert)))
    client.user("app0")
    assert client.pass_(PASSWORD).startswith(b"+OK")
    client.quit()

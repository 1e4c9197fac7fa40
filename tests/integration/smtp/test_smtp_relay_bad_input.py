"""Bad client input over raw sockets, STARTTLS on the local listener, limits and timeouts."""

from __future__ import annotations

import base64
import smtplib
import ssl
import time

import pytest
from support.app_harness import wait_settled

from relay.config.model import LimitsConfig, ListenerConfig
from relay.sasl import encode_plain
from relay.tlsutil import generate_self_signed

from .conftest import PASSWORD, USERNAME


def _b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


def _logged_in(relay):
    raw = relay.raw()
    assert raw.cmd("EHLO test").startswith("250")
    assert raw.cmd(f"AUTH PLAIN {encode_plain(USERNAME, PASSWORD)}").startswith("235 2.7.0")
    return raw


def test_mail_before_auth_is_530(start_relay):
    """MAIL without AUTH (and not a trusted client) gets 530 5.7.0."""
    raw = start_relay().raw()
    raw.cmd("EHLO test")
    assert raw.cmd("MAIL FROM:<a@example.com>").startswith("530 5.7.0")


@pytest.mark.parametrize(
    "line",
    [b"AUTH PLAIN !!!notbase64", b"AUTH PLAIN " + _b64(b"only-one-part").encode(),
     b"AUTH LOGIN #$%"],
)
def test_invalid_base64_in_auth_is_501_and_session_usable(start_relay, line):
    """Malformed AUTH data gets 501 5.5.2; the session then still accepts a good login."""
    raw = start_relay().raw()
    raw.cmd("EHLO test")
    assert raw.cmd(line).startswith("501 5.5.2")
    assert raw.cmd(f"AUTH PLAIN {encode_plain(USERNAME, PASSWORD)}").startswith("235")


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\x01"])
def test_control_characters_in_login_are_refused_locally(start_relay, sandbox, bad):
    """CR/LF/NUL/^A in a username or password: refused (501/535) and nothing reaches the upstream."""
    raw = start_relay().raw()
    raw.cmd("EHLO test")
    assert raw.cmd(f"AUTH LOGIN {_b64(f'{USERNAME}{bad}x'.encode())}").startswith("501 5.5.2")
    assert raw.cmd(f"AUTH LOGIN {_b64(USERNAME.encode())}").startswith("334")
    assert raw.cmd(_b64(f"{PASSWORD}{bad}".encode())).startswith("501 5.5.2")
    password = "pa\x00ss" if bad == "\x00" else f"{PASSWORD}{bad}"
    plain = _b64(b"\x00" + USERNAME.encode() + b"\x00" + password.encode())
    assert raw.cmd(f"AUTH PLAIN {plain}")[:3] in ("501", "535")
    assert raw.cmd("MAIL FROM:<a@example.com>").startswith("530")
    assert sandbox.smtp.counters.get("connections", 0) == 0


def test_wrong_password_and_unknown_user_are_535(start_relay):
    """Wrong password and unknown user both get 535 5.7.8 (after the authenticator's delay)."""
    raw = start_relay().raw()
    raw.cmd("EHLO test")
    assert raw.cmd(f"AUTH PLAIN {encode_plain(USERNAME, 'wrong')}").startswith("535 5.7.8")
    assert raw.cmd(f"AUTH PLAIN {encode_plain('nobody', PASSWORD)}").startswith("535 5.7.8")


def test_auth_login_two_steps_and_cancel(start_relay):
    """AUTH LOGIN prompts twice; '*' cancels with 501; a complete LOGIN succeeds."""
    raw = start_relay().raw()
    raw.cmd("EHLO test")
    assert raw.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert raw.cmd("*").startswith("501")
    assert raw.cmd("AUTH LOGIN").startswith("334")
    assert raw.cmd(_b64(USERNAME.encode())) == "334 UGFzc3dvcmQ6"
    assert raw.cmd(_b64(PASSWORD.encode())).startswith("235 2.7.0")


def test_commands_out_of_order_are_503(start_relay):
    """RCPT before MAIL, DATA before RCPT, nested MAIL: 503 5.5.1."""
    raw = _logged_in(start_relay())
    assert raw.cmd("RCPT TO:<a@example.com>").startswith("503 5.5.1")
    assert raw.cmd("DATA").startswith("503 5.5.1")
    assert raw.cmd("MAIL FROM:<a@example.com>").startswith("250")
    assert raw.cmd("MAIL FROM:<a@example.com>").startswith("503 5.5.1")


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_too_long_line_in_data_is_500_and_session_stays_usable(start_relay, sandbox, chunking):
    """A 999-octet line in DATA: 500 5.5.2 after the end, nothing delivered, next message works."""
    sandbox.smtp.advertise_chunking = chunking  # content by BDAT or by DATA
    raw = _logged_in(start_relay())
    raw.cmd("MAIL FROM:<a@example.com>")
    raw.cmd("RCPT TO:<b@example.com>")
    assert raw.cmd("DATA").startswith("354")
    raw.send(b"ok\r\n" + b"x" * 999 + b"\r\nmore\r\n.\r\n")
    assert raw.reply().startswith("500 5.5.2")
    raw.cmd("MAIL FROM:<a@example.com>")
    raw.cmd("RCPT TO:<b@example.com>")
    raw.cmd("DATA")
    raw.send(b"fine\r\n.\r\n")
    assert raw.reply().startswith("250")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"fine\r\n"]


def test_too_long_command_line_is_500_and_session_stays_usable(start_relay):
    """A command line over the limit gets 500 5.5.2; the next command works."""
    raw = _logged_in(start_relay())
    assert raw.cmd(b"NOOP " + b"x" * 2000).startswith("500 5.5.2")
    assert raw.cmd("NOOP").startswith("250")


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_client_vanishing_mid_data_delivers_nothing(start_relay, sandbox, chunking):
    """The client closes during DATA: the upstream transaction is abandoned, nothing stored."""
    sandbox.smtp.advertise_chunking = chunking  # content by BDAT or by DATA
    relay = start_relay()
    raw = _logged_in(relay)
    raw.cmd("MAIL FROM:<a@example.com>")
    raw.cmd("RCPT TO:<b@example.com>")
    assert raw.cmd("DATA").startswith("354")
    raw.send(b"Subject: half\r\n\r\npartial body\r\n")
    time.sleep(0.2)  # deliberate: the client pauses mid-message (the relay reads the part) and vanishes
    raw.close()
    wait_settled(relay, sandbox.smtp)  # the session and its upstream are gone: nothing can arrive later
    assert sandbox.smtp.messages() == []
    # and the relay still works
    with relay.smtp() as client:
        client.sendmail("a@example.com", ["b@example.com"], b"whole\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"whole\r\n"]


def test_idle_client_is_disconnected_after_the_command_timeout(start_relay):
    """A client that stops mid-command is closed after limits.smtp_command_timeout_s."""
    relay = start_relay(limits=LimitsConfig(smtp_command_timeout_s=0.5, auth_failure_delay_s=0.05))
    raw = relay.raw()
    raw.send(b"EHLO half-a-comm")
    assert raw.closed_by_server()


def test_active_client_outlives_many_idle_periods(start_relay):
    """The idle deadline moves with every command (the timer re-arms lazily): a client sending a
    command every 0.15 s for 1.2 s with limits.smtp_command_timeout_s 0.5 is never closed, and
    once silent it is closed after the timeout."""
    relay = start_relay(limits=LimitsConfig(smtp_command_timeout_s=0.5, auth_failure_delay_s=0.05,
                                            max_commands_without_progress=100))
    raw = relay.raw()
    assert raw.cmd("EHLO active.test").startswith("250")
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        time.sleep(0.15)  # pacing the client, not waiting for an outcome
        assert raw.cmd("NOOP").startswith("250")
    assert raw.closed_by_server()


def test_max_connections_answered_with_421(start_relay):
    """Past limits.max_connections a new client gets 421 4.7.0 and is closed."""
    relay = start_relay(limits=LimitsConfig(max_connections=2, auth_failure_delay_s=0.05))
    first, second = relay.raw(), relay.raw()
    third = relay.raw()
    assert third.greeting.startswith("421 4.7.0")
    assert third.closed_by_server()
    assert first.cmd("NOOP").startswith("250") and second.cmd("NOOP").startswith("250")


def test_starttls_on_the_local_listener(start_relay, sandbox, tmp_path):
    """With tls: starttls the relay offers STARTTLS and delivers over the encrypted session."""
    cert, key = generate_self_signed(tmp_path / "local-tls")
    relay = start_relay(listener=ListenerConfig(True, "127.0.0.1", 0, tls="starttls",
                                                cert_file=cert, key_file=key))
    ctx = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        assert client.ehlo()[0] == 250 and client.has_extn("starttls")
        client.starttls(context=ctx)
        client.login(USERNAME, PASSWORD)
        client.sendmail("a@example.com", ["b@example.com"], b"encrypted\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"encrypted\r\n"]


def test_auth_without_tls_refused_when_plaintext_not_allowed(start_relay, sandbox, tmp_path):
    """When the policy forbids plaintext AUTH: no AUTH in EHLO, AUTH gets 538 5.7.11; after STARTTLS
    AUTH is offered and works."""
    from .conftest import make_authenticator

    class TlsOnly:
        """The real authenticator, with the plaintext rule of a non-loopback client."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def plaintext_auth_allowed(self, listener, client_ip, tls_active):
            return tls_active

    cert, key = generate_self_signed(tmp_path / "local-tls2")
    listener = ListenerConfig(True, "127.0.0.1", 0, tls="starttls", cert_file=cert, key_file=key)
    from .conftest import build_config
    inner = make_authenticator(build_config(sandbox, tmp_path / "cfg", listener=listener))
    relay = start_relay(listener=listener, authenticator=TlsOnly(inner))
    raw = relay.raw()
    ehlo = raw.cmd("EHLO test")
    assert "AUTH" not in ehlo and "STARTTLS" in ehlo
    assert raw.cmd(f"AUTH PLAIN {encode_plain(USERNAME, PASSWORD)}").startswith("538 5.7.11")
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(cert)))
        client.ehlo()
        assert client.has_extn("auth")
        client.login(USERNAME, PASSWORD)


@pytest.mark.parametrize(("line", "reply"), [
    (b"MAIL FROM:<\xff\xfe@example.com>", "553 5.1.7"),
    (b"RCPT TO:<b\xc3(@example.com>", "553 5.1.3"),
], ids=["sender", "recipient"])
def test_addresses_that_are_not_utf8_are_refused_without_a_traceback(start_relay, sandbox, caplog,
                                                                     line, reply):
    """Issue 22.11: MAIL/RCPT with bytes that are not UTF-8 get 553 (the app stops retrying), not
    451 with a traceback; nothing reaches the upstream and the session goes on."""
    relay = start_relay()
    raw = _logged_in(relay)
    if line.startswith(b"RCPT"):
        assert raw.cmd("MAIL FROM:<app@example.com>").startswith("250")
    answer = raw.cmd(line)
    assert answer.startswith(reply), answer
    assert not [r for r in caplog.records if r.exc_info], "no traceback is logged"
    assert raw.cmd("RSET").startswith("250")
    assert raw.cmd("MAIL FROM:<app@example.com>").startswith("250")
    assert raw.cmd("RCPT TO:<b@example.com>").startswith("250")
    raw.close()
    [transcript] = sandbox.smtp.transcripts()
    assert (transcript.verbs().count("MAIL"), transcript.verbs().count("RCPT")) == (1, 1)

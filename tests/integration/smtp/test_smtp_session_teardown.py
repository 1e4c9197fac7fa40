"""A closed SMTP session is freed by reference counting, not left in cycles for the cycle collector.

aiosmtpd's session object points at itself many times over (command and AUTH tables of bound
methods, its stream callback, its StreamWriter, the ended command loop's task and traceback);
`RelaySMTP` breaks those links when the session ends (bench/README.md, memory). These tests run
real sessions over loopback with the automatic cycle collector off and require every session
object to be gone once its connection closed, however it ended.
"""

from __future__ import annotations

import smtplib
import ssl

import pytest
from support.app_harness import wait_settled
from support.cycles import assert_ended_sessions_freed, assert_freed, no_cycle_collector, track

from relay.config.model import LimitsConfig, ListenerConfig
from relay.smtp.session import RelaySMTP
from relay.tlsutil import generate_self_signed

from .conftest import PASSWORD, USERNAME, RunningRelay, StartRelay

MESSAGE = b"Subject: teardown\r\n\r\nbody\r\n"


def _quit_after_a_message(relay: RunningRelay) -> None:
    with relay.smtp() as client:
        client.sendmail("sales@sandbox.test", ["to@example.com"], MESSAGE)


def _vanish_mid_data(relay: RunningRelay) -> None:
    client = relay.smtp()
    client.mail("sales@sandbox.test")
    client.rcpt("to@example.com")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(b"Subject: cut\r\n\r\nhalf a messa")
    client.close()


def _failed_login_then_hang_up(relay: RunningRelay) -> None:
    client = relay.smtp(login=False)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(USERNAME, "wrong password")
    client.close()


def _junk_then_hang_up(relay: RunningRelay) -> None:
    raw = relay.raw()
    assert raw.cmd(b"EHLO junk").startswith("250")
    assert raw.cmd(b"X" * 3000).startswith("500")
    assert raw.cmd(b"\xff\xfe").startswith("500")
    raw.sock.close()


def _hang_up_after_greeting(relay: RunningRelay) -> None:
    relay.raw().sock.close()


ENDINGS = [_quit_after_a_message, _vanish_mid_data, _failed_login_then_hang_up, _junk_then_hang_up,
           _hang_up_after_greeting]


def test_closed_sessions_are_freed_without_the_cycle_collector(start_relay: StartRelay,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions that ended by QUIT, a vanished client mid-DATA, a failed login, junk commands or a
    hang-up after the greeting are all freed by reference counting alone."""
    assert_ended_sessions_freed(start_relay(), monkeypatch, RelaySMTP, ENDINGS, "SMTP session")


def test_starttls_and_refused_sessions_are_freed(start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A session that switched to TLS with STARTTLS, and one refused with 421 by the per-client
    connection cap (loopback is exempt from it by default: not here), are freed by reference
    counting too."""
    cert, key = generate_self_signed(tmp_path / "local-tls")
    relay = start_relay(listener=ListenerConfig(True, "127.0.0.1", 0, tls="starttls", cert_file=cert,
                                                key_file=key),
                        limits=LimitsConfig(max_connections_per_client=1, auth_failure_delay_s=0.05))
    relay.server.client_slots.exempt_loopback = False
    sessions = track(monkeypatch, RelaySMTP)
    with no_cycle_collector():
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.starttls(context=ssl.create_default_context(cafile=str(cert)))
            client.login(USERNAME, PASSWORD)
            client.sendmail("sales@sandbox.test", ["to@example.com"], MESSAGE)
            refused = relay.raw()
            assert refused.greeting.startswith("421 4.7.0") and refused.closed_by_server()
            refused.sock.close()
        wait_settled(relay)
        assert len(sessions) == 2
        assert_freed(sessions, "SMTP session")

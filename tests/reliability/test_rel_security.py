"""Security: no secret in any log line or error, private file modes, connection floods, slowloris."""

from __future__ import annotations

import base64
import logging
import poplib
import resource
import smtplib
import socket
import stat
import time

import pytest

from relay.sandbox.oauth import DEFAULT_CLIENT_SECRET
from relay.sasl import encode_plain, encode_xoauth2

from .conftest import MAILBOX, PASSWORD, USERNAME, Raw, fast_limits


def _forms(value: str) -> list[str]:
    return [value, base64.b64encode(value.encode()).decode(), repr(value)]


def test_no_secret_in_any_log_line_at_debug(rel_relay, sandbox, caplog):
    """A full session set (refresh, SMTP send, POP3 fetch, revoked token, bad password, provider
    down) with every logger at DEBUG: no token, client secret, password or store key appears in
    any captured record, exception text or traceback, nor their base64 / XOAUTH2 / PLAIN forms."""
    sandbox.oauth.rotate_refresh_tokens = True
    caplog.set_level(logging.DEBUG)
    relay = rel_relay(expired=True)
    sandbox.pop3.deliver(MAILBOX, b"Subject: in\r\n\r\nhello\r\n")
    with relay.smtp() as client:
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: s\r\n\r\nx\r\n")
    pop = relay.pop()
    pop.retr(1)
    pop.quit()
    sandbox.oauth.revoke_all_access_tokens()
    with relay.smtp() as client:
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: s\r\n\r\nx\r\n")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        relay.smtp(login=False).login(USERNAME, "wrong " + PASSWORD)
    sandbox.oauth.revoke_all_access_tokens()
    sandbox.oauth.fail_next(20, status=503)
    with relay.smtp() as client:
        assert client.mail("a@x.test")[0] == 454
    with pytest.raises(poplib.error_proto):
        relay.pop()
    sandbox.oauth.clear_faults()
    secrets_seen: list[str] = [PASSWORD, "wrong " + PASSWORD, DEFAULT_CLIENT_SECRET,
                               base64.urlsafe_b64encode(relay.key).decode().rstrip("=")]
    with sandbox.oauth.grants.lock:
        secrets_seen += list(sandbox.oauth.grants.access) + list(sandbox.oauth.grants.refresh)
    blobs = [encode_plain(USERNAME, PASSWORD)]
    blobs += [encode_xoauth2(MAILBOX, t) for t in list(sandbox.oauth.grants.access)]
    text = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    text += "\n" + caplog.text
    assert len(caplog.records) > 10
    for value in secrets_seen:
        for form in _forms(value):
            assert form not in text, f"secret leaked in logs: {form[:6]}..."
    for blob in blobs:
        assert blob not in text


def test_store_file_and_directory_are_private(rel_relay, sandbox):
    """After the relay writes rotated tokens the store file is 0600 and its directory 0700."""
    sandbox.oauth.rotate_refresh_tokens = True
    relay = rel_relay(expired=True)
    with relay.smtp() as client:
        assert client.mail("a@x.test")[0] == 250
    path = relay.config.token_store.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_two_thousand_idle_connections_then_normal_service(rel_relay, sandbox):
    """2,000 concurrent idle connections (1,000 per listener) are held without a hang, and a
    normal session still works while they are open and after they go."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 6000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    relay = rel_relay(limits=fast_limits(max_connections=1500))
    socks = []
    try:
        for i in range(2000):
            port = relay.smtp_port if i % 2 else relay.pop3_port
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        for s in socks[-10:]:
            assert s.recv(100)[:1] in (b"2", b"+")
        with relay.smtp() as client:
            assert client.sendmail("a@x.test", ["b@x.test"], b"Subject: s\r\n\r\nx\r\n") == {}
    finally:
        for s in socks:
            s.close()
    assert len(sandbox.smtp.wait_for_messages(1)) == 1


@pytest.mark.parametrize("listener", ["smtp", "pop3"])
def test_max_connections_answers_and_closes_never_hangs(rel_relay, sandbox, listener):
    """Past max_connections a new client gets 421 4.7.0 / -ERR [SYS/TEMP] and is closed at once."""
    relay = rel_relay(limits=fast_limits(max_connections=3))
    port = relay.smtp_port if listener == "smtp" else relay.pop3_port
    held = [Raw(port) for _ in range(3)]
    for h in held:
        assert h.line()[:1] in (b"2", b"+")
    extra = Raw(port, timeout_s=5)
    first = extra.line()
    assert first.startswith(b"421 4.7.0" if listener == "smtp" else b"-ERR [SYS/TEMP]")
    assert extra.closed_by_peer()
    for h in held:
        h.close()


@pytest.mark.parametrize("listener", ["smtp", "pop3"])
def test_slowloris_clients_are_timed_out(rel_relay, sandbox, listener):
    """Clients that send half a line and stall are closed after the short configured timeout."""
    relay = rel_relay(limits=fast_limits(smtp_command_timeout_s=0.5, pop3_idle_timeout_s=0.5))
    port = relay.smtp_port if listener == "smtp" else relay.pop3_port
    clients = [Raw(port, timeout_s=10) for _ in range(20)]
    started = time.monotonic()
    for c in clients:
        c.line()
        c.send(b"EHLO slo" if listener == "smtp" else b"USER slo")
    for c in clients:
        while c.line():
            pass  # the timeout notice, then EOF
    assert time.monotonic() - started < 8
    with relay.smtp() as client:
        assert client.noop()[0] == 250

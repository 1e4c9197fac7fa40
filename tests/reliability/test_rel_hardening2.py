"""Issue 22 (hardening round 2) against the live relay: secrets in logs, bounded AUTH input,
per-client connection caps, pre-login deadlines and command budgets."""

from __future__ import annotations

import base64
import logging
import time

import pytest
from support.app_harness import wait_until

from relay.sasl import encode_plain

from .conftest import PASSWORD, USERNAME, Raw, fast_limits


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_out_of_step_auth_login_never_logs_the_password(rel_relay, caplog):
    """Item 7: a client cancelling AUTH LOGIN and then sending its base64 password as a line makes
    aiosmtpd log it as an unrecognised command; neither the base64 nor its upper-case reaches a log."""
    caplog.set_level(logging.DEBUG)
    relay = rel_relay()
    raw = Raw(relay.smtp_port)
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("EHLO app.test").startswith("250")
    assert raw.smtp("AUTH LOGIN").startswith("334")
    assert raw.smtp("*").startswith("501")
    password_b64 = _b64(PASSWORD)
    assert raw.smtp(password_b64).startswith("500")
    assert raw.smtp("QUIT").startswith("221")
    raw.close()
    relay.stop()
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "unrecognised" in text
    assert password_b64 not in text and password_b64.upper() not in text


def test_auth_continuation_line_is_capped_at_2k(rel_relay):
    """Item 5: an AUTH continuation line over ~2 KB is refused as too long (not decoded, not
    checked) and the session stays in step."""
    relay = rel_relay()
    raw = Raw(relay.smtp_port)
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("EHLO app.test").startswith("250")
    assert raw.smtp("AUTH PLAIN").startswith("334")
    assert raw.smtp("A" * 3000).startswith("500 5.5.2")
    assert raw.smtp("NOOP").startswith("250")
    assert raw.smtp(f"AUTH PLAIN {encode_plain(USERNAME, PASSWORD)}").startswith("235")
    raw.close()


MSG = b"Subject: t\r\n\r\nbody\r\n"


@pytest.mark.parametrize("expires_in", [float("inf"), 1e12])
def test_absurd_expires_in_is_clamped_and_mail_flows(rel_relay, sandbox, caplog, expires_in):
    """Item 10: a token endpoint answering expires_in Infinity or 1e12 gives a usable token
    (clamped lifetime): SMTP delivers and POP3 logs in, no traceback anywhere."""
    caplog.set_level(logging.INFO)
    sandbox.oauth.settings.expired_expires_in = expires_in
    sandbox.oauth.issue_expired_tokens = True
    relay = rel_relay(expired=True)
    with relay.smtp() as client:
        assert client.sendmail("a@x.test", ["b@x.test"], MSG) == {}
    pop = relay.pop()
    assert pop.stat()[0] >= 0
    pop.quit()
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    statuses = relay.thread.run(relay.tokens.status())
    assert statuses[0].state == "valid"


def test_pop3_unexpected_upstream_error_is_sys_temp(rel_relay, caplog):
    """Item 10: an unexpected error while logging in upstream answers -ERR [SYS/TEMP] (the client
    is not dropped without a reply) and the session ends cleanly."""
    relay = rel_relay()

    async def broken(account: str) -> None:
        raise OverflowError("cannot convert float infinity to integer")

    relay.tokens.get_token = broken  # type: ignore[method-assign]
    raw = Raw(relay.pop3_port)
    assert raw.line().startswith(b"+OK")
    raw.send(f"USER {USERNAME}\r\n".encode())
    assert raw.line().startswith(b"+OK")
    raw.send(f"PASS {PASSWORD}\r\n".encode())
    assert raw.line().startswith(b"-ERR [SYS/TEMP]")
    raw.send(b"QUIT\r\n")
    assert raw.line().startswith(b"+OK")
    raw.close()


def test_background_refresher_survives_an_unexpected_exception(rel_relay, sandbox):
    """Item 10: one pass of the background refresher raising something unexpected does not end
    it: the next pass refreshes the (nearly expired) token."""
    calls = {"n": 0}

    def break_first_pass(tokens):  # before RelayApp starts the refresher
        original = tokens._single_flight

        async def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("unexpected bug in one pass")
            return await original(*args, **kwargs)

        tokens._single_flight = flaky

    rel_relay(expired=True, check_interval_s=0.05, prepare_tokens=break_first_pass)
    wait_until(lambda: sandbox.oauth.counters.get("refresh_requests", 0) >= 1, 10,
               "a refresh after the failed pass")
    assert calls["n"] >= 2


def test_refused_fresh_token_cools_down_without_token_requests(rel_relay, sandbox, caplog):
    """Item 9: while the upstream refuses every token (SMTP AUTH disabled), 20 sessions cause one
    token request, not 20, and all get 454; after the cool-down one more request is allowed (then
    a doubled cool-down), and once the upstream accepts again mail flows. The cool-down's clock is
    the test's, so load cannot end it early."""
    caplog.set_level(logging.INFO)
    relay = rel_relay(limits=fast_limits(upstream_auth_cooldown_s=60.0))
    now = [1000.0]
    relay.tokens._cooldown._clock = lambda: now[0]
    sandbox.smtp.authorize = sandbox.pop3.authorize = lambda token, user: False
    for _ in range(20):
        assert relay.mail_code() == 454
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 1
    assert sum("no token is requested" in r.getMessage() for r in caplog.records) == 1
    pop = Raw(relay.pop3_port)  # POP3 shares the cool-down: no request either
    assert pop.line().startswith(b"+OK")
    pop.send(f"USER {USERNAME}\r\n".encode())
    pop.line()
    pop.send(f"PASS {PASSWORD}\r\n".encode())
    assert pop.line().startswith(b"-ERR")
    pop.close()
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 1
    now[0] += 61  # the cool-down ends: one new token is tried (and refused: the next is 120 s)
    assert relay.mail_code() == 454
    assert relay.mail_code() == 454
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 2
    now[0] += 60
    assert relay.mail_code() == 454
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 2  # still cooling down (doubled)
    sandbox.smtp.authorize = sandbox.pop3.authorize = sandbox.oauth.token_allows
    now[0] += 61
    assert relay.mail_code() == 250


def _smtp_login(raw: Raw) -> None:
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("EHLO app.test").startswith("250")
    assert raw.smtp(f"AUTH PLAIN {encode_plain(USERNAME, PASSWORD)}").startswith("235")


def _pop3_login(raw: Raw) -> None:
    assert raw.line().startswith(b"+OK")
    raw.send(f"USER {USERNAME}\r\n".encode())
    assert raw.line().startswith(b"+OK")
    raw.send(f"PASS {PASSWORD}\r\n".encode())
    assert raw.line().startswith(b"+OK")


def _until_closed(raw: Raw, send: bytes, every_s: float, deadline_s: float) -> tuple[list[bytes], float]:
    """Send ``send`` every ``every_s`` until the server closes; return (lines read, seconds)."""
    started = time.monotonic()
    lines: list[bytes] = []
    raw.sock.settimeout(every_s)
    while time.monotonic() - started < deadline_s:
        try:
            raw.send(send)
        except OSError:
            break
        try:
            line = raw.line()
        except TimeoutError:
            continue
        except OSError:
            break
        if not line:
            break
        lines.append(line)
    took = time.monotonic() - started
    raw.sock.settimeout(2)
    try:  # whatever the server said before closing
        while line := raw.line():
            lines.append(line)
    except OSError:
        pass
    return lines, took


def test_smtp_noop_budget_closes_a_session_without_progress(rel_relay):
    """Item 2: after max_commands_without_progress NOOP/RSET in a row the SMTP session gets 421 and
    is closed; a MAIL (progress) in between starts the budget over."""
    relay = rel_relay(limits=fast_limits(max_commands_without_progress=4))
    raw = Raw(relay.smtp_port)
    _smtp_login(raw)
    for verb in ("NOOP", "RSET", "NOOP", "NOOP"):
        assert raw.smtp(verb).startswith("250")
    assert raw.smtp("MAIL FROM:<a@x.test>").startswith("250")
    for _ in range(4):
        assert raw.smtp("RSET").startswith("250")
    assert raw.smtp("NOOP").startswith("421 4.7.0")
    assert raw.closed_by_peer()


def test_pop3_noop_budget_closes_a_session_without_progress(rel_relay):
    """Item 2: POP3 NOOPs (and refused commands) beyond the budget end the session with -ERR."""
    relay = rel_relay(limits=fast_limits(max_commands_without_progress=4))
    raw = Raw(relay.pop3_port)
    _pop3_login(raw)
    for _ in range(4):
        raw.send(b"NOOP\r\n")
        assert raw.line().startswith(b"+OK")
    raw.send(b"NOOP\r\n")
    assert raw.line().startswith(b"-ERR [SYS/TEMP]")
    assert raw.closed_by_peer()


@pytest.mark.parametrize("listener", ["smtp", "pop3"])
def test_login_deadline_closes_a_connection_that_never_logs_in(rel_relay, listener):
    """Item 2: a connection that keeps talking (a NOOP every 0.2 s) but never logs in is closed
    after limits.login_timeout_s, with 421 / -ERR."""
    relay = rel_relay(limits=fast_limits(login_timeout_s=1.0))
    raw = Raw(relay.smtp_port if listener == "smtp" else relay.pop3_port)
    raw.line()
    lines, took = _until_closed(raw, b"NOOP\r\n", 0.2, 8)
    assert took < 5, "still open long after the login deadline"
    assert any(line.startswith((b"421", b"-ERR [SYS/TEMP]")) for line in lines), lines[-3:]


def test_pop3_idle_timer_is_per_line_not_per_byte(rel_relay):
    """Item 2: one byte every 0.2 s never completing a line does not keep a POP3 slot: the idle
    timeout counts from the start of the line."""
    relay = rel_relay(limits=fast_limits(pop3_idle_timeout_s=1.0))
    raw = Raw(relay.pop3_port)
    raw.line()
    lines, took = _until_closed(raw, b"N", 0.2, 8)
    assert took < 5, "a trickle of bytes kept the slot"
    assert lines and lines[-1].startswith(b"-ERR [SYS/TEMP]")


@pytest.mark.parametrize("listener", ["smtp", "pop3"])
def test_per_client_connection_cap(rel_relay, listener):
    """Item 2: with max_connections_per_client 3, a client's fourth connection is refused (421 /
    -ERR) while a slot freed by a closed one is usable again. Loopback clients are exempt in
    production; the test counts them like remote ones."""
    relay = rel_relay(limits=fast_limits(max_connections_per_client=3))
    server = relay.smtp_server if listener == "smtp" else relay.pop3_server
    server.client_slots.exempt_loopback = False
    port = relay.smtp_port if listener == "smtp" else relay.pop3_port
    held = [Raw(port) for _ in range(3)]
    for raw in held:
        assert raw.line().startswith((b"220", b"+OK"))
    extra = Raw(port)
    assert extra.line().startswith((b"421 4.7.0", b"-ERR [SYS/TEMP]"))
    assert extra.closed_by_peer()
    held.pop().close()
    deadline = time.monotonic() + 10
    while True:
        again = Raw(port)
        first = again.line()
        again.close()
        if first.startswith((b"220", b"+OK")) or time.monotonic() > deadline:
            break
    assert first.startswith((b"220", b"+OK"))
    for raw in held:
        raw.close()

"""Issue 22 (hardening round 2) against the live relay: secrets in logs, bounded AUTH input,
per-client connection caps, pre-login deadlines and command budgets."""

from __future__ import annotations

import base64
import logging
import time

import pytest

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
    relay = rel_relay(expired=True)
    relay.tokens._check_interval_s = 0.05
    calls = {"n": 0}
    original = relay.tokens._single_flight

    async def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("unexpected bug in one pass")
        return await original(*args, **kwargs)

    relay.tokens._single_flight = flaky  # type: ignore[method-assign]
    relay.thread.run(relay.tokens.start())
    deadline = time.monotonic() + 10
    while sandbox.oauth.counters.get("refresh_requests", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls["n"] >= 2
    assert sandbox.oauth.counters.get("refresh_requests", 0) >= 1


def _mail_code(relay) -> int:
    with relay.smtp() as client:
        code, _ = client.mail("from@x.test")
        if code == 250:
            client.rcpt("to@x.test")
            code, _ = client.data(MSG)
    return code


def test_refused_fresh_token_cools_down_without_token_requests(rel_relay, sandbox, caplog):
    """Item 9: while the upstream refuses every token (SMTP AUTH disabled), 20 sessions cause one
    token request, not 20, and all get 454; after the cool-down one more request is allowed, and
    once the upstream accepts again mail flows."""
    caplog.set_level(logging.INFO)
    relay = rel_relay(limits=fast_limits(upstream_auth_cooldown_s=1.0))
    sandbox.smtp.authorize = sandbox.pop3.authorize = lambda token, user: False
    for _ in range(20):
        assert _mail_code(relay) == 454
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
    time.sleep(1.1)  # the cool-down ends: one new token is tried (and refused: the next is 2 s)
    assert _mail_code(relay) == 454
    assert _mail_code(relay) == 454
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 2
    sandbox.smtp.authorize = sandbox.pop3.authorize = sandbox.oauth.token_allows
    time.sleep(2.1)
    assert _mail_code(relay) == 250

"""Issue 22 (hardening round 2) against the live relay: secrets in logs, bounded AUTH input,
per-client connection caps, pre-login deadlines and command budgets."""

from __future__ import annotations

import base64
import logging

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

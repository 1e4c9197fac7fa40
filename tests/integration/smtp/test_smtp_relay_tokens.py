"""Token expiry, revocation, provider and upstream outages, with the real TokenManager."""

from __future__ import annotations

import logging
import smtplib

import pytest


def _send(relay, body: bytes) -> None:
    with relay.smtp() as client:
        client.sendmail("app@example.com", ["a@example.com"], body)


def test_token_expired_between_two_messages_of_one_session(start_relay, sandbox):
    """Tokens expiring mid-session do not stop the second message of that session."""
    relay = start_relay()
    with relay.smtp() as client:
        client.sendmail("app@example.com", ["a@example.com"], b"one\r\n")
        sandbox.oauth.expire_all_access_tokens()
        client.sendmail("app@example.com", ["a@example.com"], b"two\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(2)] == [b"one\r\n", b"two\r\n"]


def test_token_expired_across_sessions_is_refreshed_and_delivered(start_relay, sandbox):
    """A new session after expiry gets a refreshed token and delivers."""
    relay = start_relay()
    _send(relay, b"one\r\n")
    sandbox.oauth.expire_all_access_tokens()
    refreshes = sandbox.oauth.counters.get("refresh_requests", 0)
    _send(relay, b"two\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(2)] == [b"one\r\n", b"two\r\n"]
    assert sandbox.oauth.counters.get("refresh_requests", 0) == refreshes + 1


def test_token_revoked_while_still_valid_forces_one_refresh(start_relay, sandbox):
    """The upstream rejects a revoked token that looks valid: one forced refresh, then delivery."""
    relay = start_relay()
    sandbox.oauth.revoke_all_access_tokens()
    _send(relay, b"after revoke\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"after revoke\r\n"]
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 1
    assert sandbox.smtp.counters.get("auth_failed") == 1


def test_microsoft_style_direct_535_also_forces_a_refresh(start_relay, sandbox):
    """A direct '535 5.7.3' (no 334 challenge) is handled like the Google shape."""
    sandbox.smtp.auth_failure_style = "microsoft"
    relay = start_relay()
    sandbox.oauth.revoke_all_access_tokens()
    _send(relay, b"ms\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"ms\r\n"]


def test_rejected_after_refresh_gives_454_and_one_log_line_with_fix(start_relay, sandbox, caplog):
    """If the upstream refuses even the fresh token: 454 4.7.0, and one warning naming account + fix."""
    relay = start_relay()
    sandbox.smtp.authorize = lambda token, mailbox: False
    sandbox.smtp.auth_failure_style = "microsoft"
    caplog.set_level(logging.WARNING, logger="relay.smtp")
    with relay.smtp() as client:
        code, text = client.mail("app@example.com")
    assert (code, text[:5]) == (454, b"4.7.0")
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.smtp"]
    assert len(lines) == 1
    assert "account sales" in lines[0] and "535 5.7.3" in lines[0] and "New-ServicePrincipal" in lines[0]
    assert sandbox.smtp.messages() == []


def test_refresh_token_revoked_gives_454_and_authorize_hint(start_relay, sandbox, caplog):
    """No token obtainable (refresh token dead): 454, and the log says to run `relay authorize`."""
    relay = start_relay()
    sandbox.oauth.expire_all_access_tokens()
    sandbox.oauth.force_invalid_grant = True
    caplog.set_level(logging.WARNING, logger="relay.smtp")
    with relay.smtp() as client:
        code, _ = client.mail("app@example.com")
    assert code == 454
    assert any("relay authorize sales" in r.getMessage() for r in caplog.records if r.name == "relay.smtp")


def test_oauth_provider_down_gives_4xx_then_recovers_without_restart(start_relay, sandbox):
    """Token endpoint failing: the client gets 4xx (never 250); once it is back, delivery works."""
    relay = start_relay()
    sandbox.oauth.expire_all_access_tokens()
    sandbox.oauth.fail_next(100, status=503)
    with relay.smtp() as client:
        code, _ = client.mail("app@example.com")
        assert 400 <= code < 500
    sandbox.oauth.clear_faults()
    _send(relay, b"back\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"back\r\n"]


@pytest.mark.parametrize("greeting", ["421 4.3.2 Service not available", "554 5.3.2 No service"])
def test_upstream_down_gives_4xx_then_recovers_without_restart(start_relay, sandbox, greeting):
    """Upstream refusing sessions: 451 at MAIL; when it is back the same relay delivers."""
    relay = start_relay()
    sandbox.smtp.greeting_reply = greeting
    with relay.smtp() as client:
        code, text = client.mail("app@example.com")
        assert (code, text[:5]) == (451, b"4.4.1")
        sandbox.smtp.greeting_reply = None
        client.sendmail("app@example.com", ["a@example.com"], b"later\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"later\r\n"]


def test_upstream_tls_verification_failure_is_a_4xx(start_relay, sandbox):
    """An upstream whose certificate does not verify (no CA given) is unreachable: 451, not 250."""
    from relay.config.model import UpstreamEndpoint

    relay = start_relay(smtp=UpstreamEndpoint(sandbox.host, sandbox.smtp_port, "starttls"))
    with relay.smtp() as client:
        code, _ = client.mail("app@example.com")
    assert code == 451
    assert sandbox.smtp.counters.get("auth_ok", 0) == 0


def test_upstream_silent_times_out_with_4xx(start_relay, sandbox):
    """An upstream that never greets: after upstream_connect_timeout_s the client gets 451."""
    from relay.config.model import LimitsConfig

    sandbox.smtp.never_greet = True
    relay = start_relay(limits=LimitsConfig(upstream_connect_timeout_s=0.5, auth_failure_delay_s=0.05))
    with relay.smtp() as client:
        code, _ = client.mail("app@example.com")
    assert code == 451


def test_account_not_authorized_yet_gives_454(start_relay, sandbox):
    """An account with no tokens at all: 454 4.7.0 at MAIL (never 250, never a drop)."""
    relay = start_relay(seed=False)
    with relay.smtp() as client, pytest.raises(smtplib.SMTPSenderRefused) as info:
        client.sendmail("app@example.com", ["a@example.com"], b"x\r\n")
    assert info.value.smtp_code == 454

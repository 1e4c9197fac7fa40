"""Upstream login through the real TokenManager: refresh, forced refresh, and clear failures."""

from __future__ import annotations

import logging
import socket

from relay.config.model import UpstreamEndpoint

from .conftest import PASSWORD, mailbox


def login(relay) -> bytes:
    """Log in over a raw socket as account 0; return the reply to PASS, then close."""
    raw = relay.raw()
    raw.cmd(b"USER app0")
    reply = raw.cmd(b"PASS " + PASSWORD.encode())
    raw.cmd(b"QUIT")
    raw.close()
    return reply


def test_expired_access_token_is_refreshed_before_login(pop3_relay, sandbox):
    """A stored token past its expiry is refreshed with the refresh token, then used upstream."""
    relay = pop3_relay(expired=True)
    assert login(relay) == b"+OK User successfully authenticated.\r\n"
    assert sandbox.oauth.counters.get("refresh_requests") == 1
    assert sandbox.pop3.counters.get("auth_failed", 0) == 0


def test_revoked_token_is_force_refreshed_once_and_retried(pop3_relay, sandbox):
    """A token the upstream rejects although unexpired is force-refreshed once; login succeeds."""
    relay = pop3_relay()
    sandbox.oauth.revoke_all_access_tokens()
    assert login(relay) == b"+OK User successfully authenticated.\r\n"
    assert sandbox.pop3.counters.get("auth_failed") == 1
    assert sandbox.oauth.counters.get("refresh_requests") == 1
    assert login(relay).startswith(b"+OK")  # the refreshed token is kept and reused
    assert sandbox.oauth.counters.get("refresh_requests") == 1


def test_dead_grant_asks_for_reauthorization_and_logs_the_fix(pop3_relay, sandbox, caplog):
    """Token rejected and refresh refused (invalid_grant): `-ERR [AUTH]` and one log line with the fix."""
    relay = pop3_relay()
    sandbox.oauth.revoke_all_access_tokens()
    sandbox.oauth.force_invalid_grant = True
    with caplog.at_level(logging.INFO, logger="relay.pop3"):
        assert login(relay) == b"-ERR [AUTH] Mailbox re-authorization needed; ask the relay operator\r\n"
    failures = [r.getMessage() for r in caplog.records
                if r.name == "relay.pop3" and r.levelno >= logging.WARNING]
    assert len(failures) == 1
    assert "acct0" in failures[0] and "relay authorize acct0" in failures[0]
    assert PASSWORD not in caplog.text


def test_provider_down_gives_sys_temp(pop3_relay, sandbox):
    """When the token cannot be refreshed (provider 503), the client gets `-ERR [SYS/TEMP]`."""
    sandbox.oauth.fail_next(20, status=503)  # before the start: the background refresher may go first
    relay = pop3_relay(expired=True)
    assert login(relay) == b"-ERR [SYS/TEMP] Cannot obtain an access token right now; try again later\r\n"
    sandbox.oauth.clear_faults()
    assert login(relay).startswith(b"+OK")  # recovers once the provider is back


def test_upstream_down_gives_sys_temp_and_names_the_setting(pop3_relay, sandbox, caplog):
    """An unreachable upstream gives `-ERR [SYS/TEMP]` and a log line naming the account setting."""
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    relay = pop3_relay(upstream=UpstreamEndpoint("127.0.0.1", dead_port, "implicit",
                                                 ca_file=sandbox.ca_file))
    with caplog.at_level(logging.INFO, logger="relay.pop3"):
        assert login(relay) == b"-ERR [SYS/TEMP] Upstream mail server unavailable; try again later\r\n"
    assert "accounts.acct0.pop3" in caplog.text


def test_locked_maildrop_passes_in_use_through(pop3_relay, sandbox):
    """A second session on a locked maildrop gets the upstream's [IN-USE] reply, no token refresh."""
    relay = pop3_relay()
    first = relay.pop()
    second = relay.raw()
    second.cmd(b"USER app0")
    assert second.cmd(b"PASS " + PASSWORD.encode()).startswith(b"-ERR [IN-USE]")
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 0
    second.close()
    first.quit()


def test_session_log_line_has_no_secrets(pop3_relay, sandbox, caplog):
    """The one INFO line per session names account, client, counts and outcome, never secrets."""
    sandbox.pop3.deliver(mailbox(0), b"Subject: x\r\n\r\nhi\r\n")
    relay = pop3_relay()
    with caplog.at_level(logging.INFO, logger="relay.pop3"):
        client = relay.pop()
        client.retr(1)
        client.quit()
        relay.stop()
    ended = [r.getMessage() for r in caplog.records if "ended:" in r.getMessage()]
    assert len(ended) == 1
    assert "account=acct0" in ended[0] and "outcome=quit" in ended[0] and "commands=4" in ended[0]
    assert PASSWORD not in caplog.text and "Bearer" not in caplog.text

"""Token endpoint, token store and POP3 upstream faults, seen through the live relay."""

from __future__ import annotations

import logging
import os
import poplib
import time
import types

import pytest
from support.app_harness import wait_settled, wait_until

from relay.config.model import UpstreamEndpoint
from relay.errors import TokenStoreError
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

from .conftest import MAILBOX, fast_limits

MSG = b"Subject: t\r\n\r\nbody\r\n"


@pytest.mark.parametrize("fault", ["http500", "hang", "invalid_json", "invalid_grant"])
def test_token_endpoint_faults_give_454_never_250(rel_relay, sandbox, caplog, fault):
    """Token endpoint 500 / hanging / invalid JSON / invalid_grant: 454 at MAIL, nothing stored,
    and the cause is logged (invalid_grant naming `relay authorize`)."""
    oauth = sandbox.oauth
    # The fault is in place before the relay starts: RelayApp's background refresher renews the
    # expired token at start-up, and a refresh before the fault would let the session through.
    if fault == "http500":
        oauth.fail_next(10, status=500)
    elif fault == "hang":
        oauth.hang_token_endpoint = True
    elif fault == "invalid_json":
        oauth.invalid_json_next(10)
    else:
        oauth.force_invalid_grant = True
    relay = rel_relay(expired=True, http_timeout_s=0.5)
    with caplog.at_level(logging.INFO):
        assert relay.mail_code() == 454
    assert sandbox.smtp.messages() == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    if fault == "invalid_grant":
        assert "relay authorize rel" in logged
    else:
        assert "account rel" in logged or "account 'rel'" in logged
    oauth.clear_faults()
    oauth.hang_token_endpoint = False
    if fault != "invalid_grant":  # a transient fault heals by itself
        assert relay.mail_code() == 250
        assert len(sandbox.smtp.wait_for_messages(1)) == 1


def test_clock_skew_tokens_expired_on_arrival_still_deliver(rel_relay, sandbox):
    """The provider's tokens say expires_in < 0 (clock skew): mail still flows, one refresh a session."""
    relay = rel_relay(expired=True)
    # RelayApp starts the background refresher, which renews the expired stored token once at
    # start (as under `relay serve`); the sessions' refreshes are counted from there.
    wait_until(lambda: sandbox.oauth.counters.get("refresh_requests", 0) >= 1, what="the start-up refresh")
    wait_until(lambda: relay.run(relay.tokens.status())[0].state == "valid", what="the refreshed token")
    at_start = sandbox.oauth.counters["refresh_requests"]
    sandbox.oauth.issue_expired_tokens = True
    for _ in range(3):
        assert relay.mail_code() == 250
    assert len(sandbox.smtp.wait_for_messages(3)) == 3
    assert sandbox.oauth.counters["refresh_requests"] - at_start <= 3


def test_short_token_lifetimes_over_a_run(rel_relay, sandbox):
    """Scaled-down months: 3 s tokens, 1 s margin, 0.5 s refresher for ~7 s: every SMTP message and
    POP3 login succeeds and the refresher renews tokens (stands in for 60 s tokens over 5 minutes)."""
    sandbox.oauth.token_lifetime_s = 3
    sandbox.oauth.rotate_refresh_tokens = True
    relay = rel_relay(expired=True, check_interval_s=0.5,
                      limits=fast_limits(token_refresh_margin_s=1.0))
    sandbox.pop3.deliver(MAILBOX, b"Subject: in\r\n\r\nhello\r\n")
    deadline = time.monotonic() + 7
    sent = 0
    while time.monotonic() < deadline:
        assert relay.mail_code() == 250
        sent += 1
        pop = relay.pop()
        assert pop.stat()[0] == 1
        pop.quit()
        time.sleep(0.4)  # pacing, not a guard: keep using the relay while the background refresh runs
    assert len(sandbox.smtp.wait_for_messages(sent)) == sent
    assert sandbox.oauth.counters["refresh_requests"] >= 2


def test_unwritable_store_keeps_old_file_and_rotated_tokens(rel_relay, sandbox, caplog, monkeypatch):
    """A rotated refresh token that cannot be written: the old file is intact, an ERROR is logged,
    mail keeps flowing from memory, and the tokens are saved once the directory is writable again."""
    import relay.tokens.store as store_module

    sandbox.oauth.rotate_refresh_tokens = True

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def refuse_writes(_tokens: object) -> None:  # before the background refresher starts: it may
        monkeypatch.setattr(store_module, "tempfile", types.SimpleNamespace(mkstemp=refuse))  # go first

    relay = rel_relay(expired=True, prepare_tokens=refuse_writes)
    path = relay.config.token_store.path
    before = path.read_bytes()  # as seeded: no write has succeeded since
    old = relay.thread.run(EncryptedFileStore(path, relay.key).open().get("rel"))
    with caplog.at_level(logging.ERROR, logger="relay.tokens"):
        assert relay.mail_code() == 250
        assert relay.mail_code() == 250
    assert path.read_bytes() == before
    assert any("could not be saved" in r.getMessage() for r in caplog.records)
    assert sandbox.oauth.counters["refresh_requests"] == 1
    monkeypatch.undo()
    relay.thread.run(relay.tokens.refresh_due())
    assert path.read_bytes() != before
    saved = EncryptedFileStore(path, relay.key).open()
    stored = relay.thread.run(saved.get("rel"))
    assert old is not None and stored is not None and stored.refresh_token != old.refresh_token


def test_store_corrupted_while_running_gives_454_and_a_clear_error(rel_relay, sandbox, caplog):
    """A store file that appears corrupted under a running relay holding no tokens: 454, not 250,
    and the log says the store cannot be read (no crash, no secret)."""
    relay = rel_relay(seed=False)
    path = relay.config.token_store.path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"XO2RTOK\x01" + os.urandom(80))
    os.close(fd)
    with caplog.at_level(logging.ERROR, logger="relay.tokens"):
        assert relay.mail_code() == 454
    assert any("cannot be decrypted" in r.getMessage() for r in caplog.records)
    assert sandbox.smtp.messages() == []


def test_store_corrupted_while_running_keeps_serving_held_tokens(rel_relay, sandbox, caplog):
    """The store file is corrupted under a relay that read it before: the tokens it holds (even
    ones needing a refresh) keep mail flowing, an ERROR names the unreadable store, and the damaged
    file is never overwritten."""
    sandbox.oauth.rotate_refresh_tokens = True
    relay = rel_relay(expired=True)
    path = relay.config.token_store.path
    damaged = path.read_bytes()[:-5] + b"XXXXX"
    # Swapped in whole, as a damaged disk would present it: write_bytes would let the relay's
    # reload check (the start-up refresh may be saving meanwhile) see a 0-byte file instead.
    spare = path.with_name("damaged.tmp")
    spare.write_bytes(damaged)
    spare.chmod(0o600)
    os.replace(spare, path)
    with caplog.at_level(logging.ERROR, logger="relay.tokens"):
        assert relay.mail_code() == 250
        assert relay.mail_code() == 250
    assert any("cannot be decrypted" in r.getMessage() for r in caplog.records)
    assert sandbox.oauth.counters["refresh_requests"] == 1
    assert path.read_bytes() == damaged


def test_wrong_key_and_open_to_others_store_are_refused(rel_relay, sandbox):
    """Opening the store with another key, or a store file readable by others, raises
    TokenStoreError naming the fix; the message carries no key material."""
    relay = rel_relay()
    path = relay.config.token_store.path
    other = generate_key()
    with pytest.raises(TokenStoreError, match="key is wrong") as info:
        EncryptedFileStore(path, decode_key(other, "test")).open()
    assert other not in str(info.value)
    path.chmod(0o644)
    with pytest.raises(TokenStoreError, match="chmod 600"):
        EncryptedFileStore(path, relay.key).open()


@pytest.mark.parametrize("verb", ["RETR", "DELE"])
def test_pop3_upstream_err_on_retr_or_dele_passes_through_and_deletes_nothing(rel_relay, sandbox, verb):
    """-ERR from the upstream on RETR/DELE reaches the client; after QUIT the maildrop is intact."""
    relay = rel_relay()
    sandbox.pop3.deliver(MAILBOX, b"Subject: keep\r\n\r\nkeep me\r\n")
    sandbox.pop3.err_on = {verb: "-ERR [SYS/TEMP] disk trouble"}
    pop = relay.pop()
    with pytest.raises(poplib.error_proto, match="disk trouble"):
        pop.retr(1) if verb == "RETR" else pop.dele(1)
    pop.quit()
    sandbox.pop3.clear_faults()
    assert len(sandbox.pop3.mailbox(MAILBOX)) == 1


def test_pop3_slow_upstream_times_out_and_deletes_nothing(rel_relay, sandbox):
    """An upstream slower than upstream_command_timeout_s after DELE: the client gets -ERR and the
    connection closes; no QUIT reached the upstream, the message stays."""
    relay = rel_relay(limits=fast_limits(upstream_command_timeout_s=0.5))
    sandbox.pop3.deliver(MAILBOX, b"Subject: keep\r\n\r\nkeep me\r\n")
    pop = relay.pop()
    assert pop.dele(1).startswith(b"+OK")
    sandbox.pop3.delay_s = 1.5
    with pytest.raises((poplib.error_proto, EOFError, OSError)):
        pop.stat()
        pop.quit()
    pop.close()
    sandbox.pop3.clear_faults()
    wait_settled(relay, sandbox.pop3)  # the upstream session is over: a late QUIT cannot commit the DELE
    assert len(sandbox.pop3.mailbox(MAILBOX)) == 1


def test_pop3_upstream_bad_certificate_fails_closed(rel_relay, sandbox):
    """POP3 upstream whose certificate does not verify (no CA): -ERR [SYS/TEMP], never a login."""
    relay = rel_relay(pop3=UpstreamEndpoint(sandbox.host, sandbox.pop3_port, "implicit"))
    pop = relay.pop(login=False)
    pop.user("rel-app")
    with pytest.raises(poplib.error_proto, match="SYS/TEMP"):
        pop.pass_("rel pass phrase 42")
    pop.close()
    assert sandbox.pop3.counters.get("auth_ok", 0) == 0


def test_smtp_token_revoked_mid_run_recovers_with_one_refresh(rel_relay, sandbox):
    """All access tokens revoked at the provider: the next message forces one refresh and delivers."""
    relay = rel_relay()
    assert relay.mail_code() == 250
    sandbox.oauth.revoke_all_access_tokens()
    with relay.smtp() as client:
        assert client.sendmail("a@x.test", ["b@x.test"], MSG) == {}
    assert len(sandbox.smtp.wait_for_messages(2)) == 2
    assert sandbox.oauth.counters["refresh_requests"] == 1

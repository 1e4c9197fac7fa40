"""Scenarios through the relay with real software on both sides: legacy clients (swaks, msmtp,
fetchmail, smtplib) -> relay -> Postfix (SASL via Dovecot) -> Dovecot Maildir -> relay POP3."""

from __future__ import annotations

import smtplib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from real_clients import make_message, run_client
from real_servers import header_value, strip_trace_headers, wait_until
from relay_stack import LOCAL_PASSWORD, LOCAL_USER

pytestmark = pytest.mark.real_servers


def swaks_send(relay, cert_file: Path, message: bytes, *, auth: str,
               starttls: bool) -> subprocess.CompletedProcess[bytes]:
    """Send ``message`` through the relay with swaks (AUTH PLAIN or LOGIN, optional STARTTLS)."""
    args = ["swaks", "--server", "127.0.0.1", "--port", str(relay.smtp_port), "--ehlo", "client.test",
            "--auth", auth, "--auth-user", LOCAL_USER, "--auth-password", LOCAL_PASSWORD,
            "--from", relay.mailbox, "--to", relay.mailbox, "--data", "-", "--timeout", "60"]
    if starttls:
        args += ["--tls", "--tls-ca-path", str(cert_file), "--tls-verify"]
    # swaks ends DATA with CRLF . CRLF after the text it is given: pass it without the last CRLF.
    return run_client(args, stdin=message.removesuffix(b"\r\n"), package="swaks libnet-ssleay-perl")


def fetchmail(relay, out_dir: Path, *, keep: bool,
              timeout_s: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """Fetch everything from the relay's POP3 with fetchmail; each message becomes one file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = out_dir.parent / f"fetchmailrc-{out_dir.name}"
    rc.write_text(f'poll 127.0.0.1 service {relay.pop3_port} protocol pop3 auth password\n'
                  f'  user "{LOCAL_USER}" password "{LOCAL_PASSWORD}" is "tester" here\n'
                  f'  {"keep" if keep else "nokeep"} fetchall sslproto "" \n'
                  f'  mda "/bin/sh -c \'cat > {out_dir}/msg-$$\'"\n')
    rc.chmod(0o600)
    return run_client(["fetchmail", "-f", str(rc), "--nosyslog", "--invisible", "-v",
                       "--pidfile", str(out_dir.parent / f"fetchmail-{out_dir.name}.pid")],
                      timeout_s=timeout_s)


def fetched(out_dir: Path) -> list[bytes]:
    """The messages fetchmail delivered into ``out_dir``."""
    return [p.read_bytes() for p in sorted(out_dir.glob("msg-*"))]


def smtplib_send(relay, message: bytes, *, rcpt: str | None = None) -> None:
    """Send through the relay with smtplib, AUTH PLAIN on loopback without TLS."""
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=120) as smtp:
        smtp.login(LOCAL_USER, LOCAL_PASSWORD)
        smtp.sendmail(relay.mailbox, [rcpt or relay.mailbox], message)


@pytest.mark.parametrize("starttls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("auth", ["PLAIN", "LOGIN"])
def test_swaks_through_relay_delivers_the_same_bytes(relay, real_world, auth: str, starttls: bool) -> None:
    """swaks -> relay -> Postfix -> Maildir: the stored message equals the one sent (trace aside)."""
    message = make_message(f"swaks {auth} {starttls}", to=relay.mailbox)
    proc = swaks_send(relay, real_world.cert_file, message, auth=auth, starttls=starttls)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode() + real_world.diagnostics()
    [stored] = real_world.dovecot.wait_for_messages(relay.mailbox, 1)
    assert strip_trace_headers(stored) == strip_trace_headers(message)
    assert f"sasl_username={relay.mailbox}" in real_world.postfix.log_text()


def test_fetchmail_keep_through_relay_pop3_gets_the_bytes_sent(relay, real_world, tmp_path: Path) -> None:
    """fetchmail (keep) via the relay's POP3 receives exactly what was sent; nothing is deleted."""
    messages = [make_message(f"fetch keep {i}", to=relay.mailbox) for i in range(3)]
    for message in messages:
        smtplib_send(relay, message)
    real_world.dovecot.wait_for_messages(relay.mailbox, 3)
    proc = fetchmail(relay, tmp_path / "out", keep=True)
    assert proc.returncode == 0, proc.stderr.decode() + real_world.diagnostics()
    got = sorted(strip_trace_headers(m) for m in fetched(tmp_path / "out"))
    assert got == sorted(strip_trace_headers(m) for m in messages)
    assert len(real_world.dovecot.messages(relay.mailbox)) == 3


def test_fetchmail_without_keep_empties_the_mailbox(relay, real_world, tmp_path: Path) -> None:
    """fetchmail (nokeep) deletes through the relay: DELE + QUIT reach Dovecot's UPDATE state."""
    for i in range(2):
        smtplib_send(relay, make_message(f"fetch delete {i}", to=relay.mailbox))
    real_world.dovecot.wait_for_messages(relay.mailbox, 2)
    proc = fetchmail(relay, tmp_path / "out", keep=False)
    assert proc.returncode == 0, proc.stderr.decode() + real_world.diagnostics()
    assert len(fetched(tmp_path / "out")) == 2
    assert real_world.dovecot.messages(relay.mailbox) == []


def test_fetchmail_killed_mid_fetch_deletes_nothing(relay, real_world, tmp_path: Path) -> None:
    """Killing fetchmail (nokeep) while it downloads leaves every message on the server."""
    big = make_message("big one", body_lines=200_000, to=relay.mailbox)  # ~5 MB: slow enough to kill
    for _ in range(3):
        smtplib_send(relay, big)
    real_world.dovecot.wait_for_messages(relay.mailbox, 3)
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "rc"
    rc.write_text(f'poll 127.0.0.1 service {relay.pop3_port} protocol pop3 auth password\n'
                  f'  user "{LOCAL_USER}" password "{LOCAL_PASSWORD}" is "tester" here\n'
                  f'  nokeep fetchall sslproto "" limit 0\n'
                  f'  mda "/bin/sh -c \'sleep 0.5; cat > {out}/msg-$$\'"\n')
    rc.chmod(0o600)
    proc = subprocess.Popen(["fetchmail", "-f", str(rc), "--nosyslog", "--invisible",
                             "--pidfile", str(tmp_path / "fm.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(out.iterdir()), 60, "fetchmail to start delivering")
    finally:
        proc.kill()
        proc.wait(10)
    # Once the relay has ended the session (and so closed its upstream one) no QUIT can reach
    # Dovecot any more: a deletion cannot come after this point.
    wait_until(lambda: relay.active_sessions() == 0, 30, "the relay to end the killed client's session")
    assert len(real_world.dovecot.messages(relay.mailbox)) == 3


def test_msmtp_through_relay_is_delivered(relay, real_world) -> None:
    """msmtp with AUTH PLAIN over STARTTLS to the relay delivers into the real mailbox."""
    message = make_message("msmtp via relay", to=relay.mailbox)
    proc = run_client(["msmtp", "--host=127.0.0.1", f"--port={relay.smtp_port}", "--tls=on",
                       "--tls-starttls=on", f"--tls-trust-file={real_world.cert_file}",
                       "--tls-host-override=localhost", "--auth=plain", f"--user={LOCAL_USER}",
                       f"--passwordeval=printf %s '{LOCAL_PASSWORD}'", f"--from={relay.mailbox}",
                       "--", relay.mailbox], stdin=message)
    assert proc.returncode == 0, proc.stderr.decode() + real_world.diagnostics()
    [stored] = real_world.dovecot.wait_for_messages(relay.mailbox, 1)
    assert strip_trace_headers(stored) == strip_trace_headers(message)


def test_ten_megabyte_message_arrives_intact(relay, real_world) -> None:
    """A 10 MB message passes relay and Postfix and is stored byte for byte."""
    message = make_message("ten megabytes", body_lines=400_000, to=relay.mailbox)
    assert len(message) > 10 * 1024 * 1024
    smtplib_send(relay, message)
    [stored] = real_world.dovecot.wait_for_messages(relay.mailbox, 1, timeout_s=60)
    assert strip_trace_headers(stored) == strip_trace_headers(message)


def test_200_messages_from_20_concurrent_clients_arrive_exactly_once(relay, real_world) -> None:
    """20 smtplib clients x 10 messages: each Message-ID is in the mailbox exactly once."""
    messages = [make_message(f"bulk {i}", body_lines=2, to=relay.mailbox) for i in range(200)]

    def client(chunk: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=120) as smtp:
            smtp.login(LOCAL_USER, LOCAL_PASSWORD)
            for message in chunk:
                smtp.sendmail(relay.mailbox, [relay.mailbox], message)

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(client, [messages[i::20] for i in range(20)]))
    stored = real_world.dovecot.wait_for_messages(relay.mailbox, 200, timeout_s=90)
    ids = sorted(header_value(m, "Message-ID") or "" for m in stored)
    assert ids == sorted(header_value(m, "Message-ID") or "" for m in messages)


def test_expired_access_token_is_refreshed_between_sessions(relay_factory, real_world) -> None:
    """With 3 s access tokens, a session after expiry still authenticates (the relay refreshed)."""
    saved = real_world.oauth.token_lifetime_s
    real_world.oauth.token_lifetime_s = 3  # refreshed tokens are short-lived too
    try:
        relay = relay_factory(access_lifetime_s=3.0)
        smtplib_send(relay, make_message("before expiry", to=relay.mailbox))
        refreshes = real_world.oauth.counters.get("refresh_requests", 0)
        first = relay.run(relay.tokens.get_token("real")).reveal()
        wait_until(lambda: real_world.oauth.validate_access_token(first) is None, 15,
                   "the first access token to expire at the provider")
        smtplib_send(relay, make_message("after expiry", to=relay.mailbox))
    finally:
        real_world.oauth.token_lifetime_s = saved
    real_world.dovecot.wait_for_messages(relay.mailbox, 2)
    assert real_world.oauth.counters.get("refresh_requests", 0) > refreshes


def test_token_revoked_at_provider_is_replaced_and_sending_continues(relay, real_world) -> None:
    """After revocation Postfix says 535; the relay force-refreshes and the client sees success."""
    smtplib_send(relay, make_message("before revoke", to=relay.mailbox))
    real_world.oauth.revoke_all_access_tokens()
    smtplib_send(relay, make_message("after revoke", to=relay.mailbox))
    real_world.dovecot.wait_for_messages(relay.mailbox, 2)
    assert "SASL XOAUTH2 authentication failed" in real_world.postfix.log_text()


def test_token_for_wrong_mailbox_gives_client_an_auth_failure(relay_factory, real_world,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A grant for another mailbox: the client gets 454/535 (at AUTH or MAIL: the relay may log in
    upstream lazily), and the relay's log carries Postfix's own text."""
    relay = relay_factory(token_mailbox=real_world.new_mailbox())
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as smtp, \
            pytest.raises(smtplib.SMTPResponseException) as err:
        smtp.login(LOCAL_USER, LOCAL_PASSWORD)
        smtp.sendmail(relay.mailbox, [relay.mailbox], make_message("wrong box", to=relay.mailbox))
    assert err.value.smtp_code in (454, 535), err.value
    assert "5.7.8 Error: authentication failed" in caplog.text


def test_upstream_down_gives_4xx_then_works_after_restart(relay, real_world) -> None:
    """Postfix and Dovecot stopped: SMTP gets 4xx, POP3 -ERR [SYS/TEMP]; restarted: both work."""
    import poplib

    real_world.postfix.stop()
    real_world.dovecot.stop()
    try:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as smtp, \
                pytest.raises(smtplib.SMTPResponseException) as err:
            smtp.login(LOCAL_USER, LOCAL_PASSWORD)
            smtp.sendmail(relay.mailbox, [relay.mailbox], make_message("down", to=relay.mailbox))
        assert 400 <= err.value.smtp_code < 500, err.value
        pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=60)
        try:
            pop.user(LOCAL_USER)
            with pytest.raises(poplib.error_proto) as perr:
                pop.pass_(LOCAL_PASSWORD)
        finally:
            pop.close()
        assert perr.value.args[0].startswith(b"-ERR [SYS/TEMP]")
    finally:
        real_world.dovecot.start()
        real_world.postfix.start()
    smtplib_send(relay, make_message("back up", to=relay.mailbox))
    real_world.dovecot.wait_for_messages(relay.mailbox, 1)
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=60)
    try:
        pop.user(LOCAL_USER)
        assert pop.pass_(LOCAL_PASSWORD).startswith(b"+OK")
        assert pop.stat()[0] == 1
    finally:
        pop.quit()



async def test_postfix_offers_pipelining_and_chunking_so_the_relay_uses_bdat(relay, real_world) -> None:
    """Postfix's EHLO after STARTTLS offers PIPELINING and CHUNKING: the relay's upstream session
    pipelines MAIL+RCPT and sends content as BDAT against it (every relay test here uses that path)."""
    from relay.secret import Secret
    from relay.smtp.upstream import UpstreamSmtpSession

    endpoint = relay.config.accounts["real"].smtp
    assert endpoint is not None
    up = UpstreamSmtpSession(endpoint, account="real", connect_timeout_s=10, command_timeout_s=10)
    await up.connect()
    try:
        await up.authenticate(relay.mailbox, Secret(real_world.token(relay.mailbox)))
        assert up.pipelining and up.chunking
    finally:
        await up.quit()


@pytest.mark.parametrize("pipelining", [True, False], ids=["bdat", "classic"])
def test_postfix_recipient_refusal_is_passed_on_exactly_and_the_rest_delivered(relay_factory, real_world,
                                                                               pipelining: bool) -> None:
    """First RCPT unknown (with PIPELINING it goes in one write with MAIL): the client gets
    Postfix's own 550 5.1.1 text; the accepted recipient gets the message (BDAT or DATA)."""
    relay = relay_factory(smtp_pipelining=pipelining)
    message = make_message(f"partial {pipelining}", body_lines=50_000, to=relay.mailbox)  # several chunks
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=120) as smtp:
        smtp.login(LOCAL_USER, LOCAL_PASSWORD)
        refused = smtp.sendmail(relay.mailbox, ["nobody@example.com", relay.mailbox], message)
    assert refused == {"nobody@example.com": (550, b"5.1.1 <nobody@example.com>: Recipient address "
                                                   b"rejected: User unknown in virtual mailbox table")}
    [stored] = real_world.dovecot.wait_for_messages(relay.mailbox, 1, timeout_s=60)
    assert strip_trace_headers(stored) == strip_trace_headers(message)

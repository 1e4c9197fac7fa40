"""The fixtures themselves, without the relay: real clients against the private Postfix and Dovecot.

These pin down the real servers' wire behaviour (exact reply texts) that the relay and the
sandbox upstreams must match.
"""

from __future__ import annotations

import base64
import json
import poplib
import smtplib

import pytest
from real_clients import (
    make_message,
    msmtp_xoauth2,
    pop3_connect,
    pop3_xoauth2,
    smtp_xoauth2,
)
from real_servers import strip_trace_headers

pytestmark = pytest.mark.real_servers

BAD_TOKEN_CHALLENGE = "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0="
POSTFIX_AUTH_FAILED = "5.7.8 Error: authentication failed: (reason unavailable)"


def test_msmtp_xoauth2_over_starttls_is_delivered_to_the_maildir(real_world) -> None:
    """msmtp's XOAUTH2 passes Postfix's Dovecot SASL check and the message lands in the Maildir."""
    mailbox = real_world.new_mailbox()
    message = make_message("msmtp direct", to=mailbox)
    proc = msmtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, mailbox,
                         real_world.token(mailbox), rcpt=mailbox, message=message)
    assert proc.returncode == 0, proc.stderr.decode() + real_world.diagnostics()
    assert b"235 2.7.0 Authentication successful" in proc.stderr + proc.stdout
    [stored] = real_world.dovecot.wait_for_messages(mailbox, 1)
    assert b"Subject: msmtp direct" in stored
    assert b"sasl_method=XOAUTH2" in real_world.postfix.log_text().encode()


def test_postfix_answers_bad_token_with_json_challenge_then_535_5_7_8(real_world) -> None:
    """A rejected token gets 334 <base64 JSON>, and after the empty line 535 5.7.8 from Postfix."""
    mailbox = real_world.new_mailbox()
    outcome, smtp = smtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, mailbox,
                                 "not-a-token")
    smtp.close()
    assert outcome.replies[0] == ("334", "")
    assert outcome.replies[1] == ("334", BAD_TOKEN_CHALLENGE)
    assert json.loads(base64.b64decode(outcome.replies[1][1])) == {
        "status": "401", "schemes": "bearer", "scope": "mail"}
    assert outcome.final == ("535", POSTFIX_AUTH_FAILED)


def test_postfix_refuses_a_live_token_issued_for_another_mailbox(real_world) -> None:
    """A valid token used with a different user= is refused (introspection email must match)."""
    owner, other = real_world.new_mailbox(), real_world.new_mailbox()
    outcome, smtp = smtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, other,
                                 real_world.token(owner))
    smtp.close()
    assert outcome.final == ("535", POSTFIX_AUTH_FAILED), outcome.replies


def test_postfix_refuses_a_revoked_token(real_world) -> None:
    """Revoking at the provider takes effect at once: the server asks introspection every time."""
    mailbox = real_world.new_mailbox()
    token = real_world.token(mailbox)
    outcome, smtp = smtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, mailbox, token)
    smtp.quit()
    assert outcome.final[0] == "235", outcome.replies
    real_world.oauth.revoke_access_token(token)
    outcome, smtp = smtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, mailbox, token)
    smtp.close()
    assert outcome.final == ("535", POSTFIX_AUTH_FAILED)


def test_postfix_offers_no_auth_before_starttls(real_world) -> None:
    """Before STARTTLS Postfix advertises no AUTH and answers AUTH with 503 5.5.1."""
    with smtplib.SMTP("127.0.0.1", real_world.postfix.smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert not smtp.has_extn("auth")
        code, text = smtp.docmd("AUTH", "XOAUTH2")
    assert (code, text.decode()) == (503, "5.5.1 Error: authentication not enabled")


def test_postfix_rejects_an_unknown_recipient_with_550_5_1_1(real_world) -> None:
    """An unknown mailbox in the virtual domain gets Postfix's real 550 5.1.1 text at RCPT."""
    mailbox = real_world.new_mailbox()
    outcome, smtp = smtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, mailbox,
                                 real_world.token(mailbox))
    try:
        assert outcome.final[0] == "235"
        smtp.mail(mailbox)
        code, text = smtp.rcpt("nobody@example.com")
    finally:
        smtp.close()
    assert code == 550
    assert text.decode() == ("5.1.1 <nobody@example.com>: Recipient address rejected: "
                             "User unknown in virtual mailbox table")


@pytest.mark.parametrize("implicit_tls", [True, False], ids=["pop3s", "stls"])
def test_poplib_xoauth2_retrieves_the_bytes_sent(real_world, implicit_tls: bool) -> None:
    """Sent via Postfix, fetched from Dovecot over POP3 XOAUTH2: same bytes, dots unstuffed."""
    mailbox = real_world.new_mailbox()
    message = make_message("pop3 direct", to=mailbox)
    outcome, smtp = smtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, mailbox,
                                 real_world.token(mailbox))
    try:
        smtp.sendmail(mailbox, [mailbox], message)
    finally:
        smtp.quit()
    real_world.dovecot.wait_for_messages(mailbox, 1)
    port = real_world.dovecot.pop3s_port if implicit_tls else real_world.dovecot.pop3_port
    pop = pop3_connect(port, real_world.cert_file, implicit_tls=implicit_tls)
    try:
        outcome = pop3_xoauth2(pop, mailbox, real_world.token(mailbox))
        assert outcome.replies[0][1] == "+ "
        assert outcome.final[1] == "+OK Logged in."
        assert pop.stat()[0] == 1
        _resp, lines, _octets = pop.retr(1)
    finally:
        pop.quit()
    fetched = b"\r\n".join(lines) + b"\r\n"
    assert strip_trace_headers(fetched) == strip_trace_headers(message)


def test_dovecot_answers_bad_token_with_challenge_then_err_auth(real_world) -> None:
    """Dovecot's exact POP3 failure: '+ <base64 JSON>', then '-ERR [AUTH] Authentication failed.'"""
    mailbox = real_world.new_mailbox()
    pop = pop3_connect(real_world.dovecot.pop3s_port, real_world.cert_file, implicit_tls=True)
    try:
        outcome = pop3_xoauth2(pop, mailbox, "not-a-token")
    finally:
        pop.close()
    assert [text for _, text in outcome.replies] == [
        "+ ", f"+ {BAD_TOKEN_CHALLENGE}", "-ERR [AUTH] Authentication failed."]


def test_dovecot_dele_without_quit_deletes_nothing(real_world) -> None:
    """A POP3 session that drops after DELE never reaches UPDATE: the message stays."""
    mailbox = real_world.new_mailbox()
    outcome, smtp = smtp_xoauth2(real_world.postfix.smtp_port, real_world.cert_file, mailbox,
                                 real_world.token(mailbox))
    try:
        assert outcome.final[0] == "235", outcome.replies
        smtp.sendmail(mailbox, [mailbox], make_message("keep me", to=mailbox))
    finally:
        smtp.quit()
    real_world.dovecot.wait_for_messages(mailbox, 1)
    pop = pop3_connect(real_world.dovecot.pop3s_port, real_world.cert_file, implicit_tls=True)
    assert pop3_xoauth2(pop, mailbox, real_world.token(mailbox)).final[1].startswith("+OK")
    assert pop.dele(1).startswith(b"+OK")
    pop.close()  # drop without QUIT
    pop = pop3_connect(real_world.dovecot.pop3s_port, real_world.cert_file, implicit_tls=True)
    try:
        assert pop3_xoauth2(pop, mailbox, real_world.token(mailbox)).final[1].startswith("+OK")
        assert pop.stat()[0] == 1
        assert pop.dele(1).startswith(b"+OK")
    finally:
        pop.quit()
    assert real_world.dovecot.messages(mailbox) == []


def test_dovecot_refuses_user_pass_when_only_xoauth2_is_configured(real_world) -> None:
    """The upstream accepts only OAuth: a plain USER/PASS login is refused (-ERR)."""
    pop = pop3_connect(real_world.dovecot.pop3s_port, real_world.cert_file, implicit_tls=True)
    try:
        pop.user(real_world.new_mailbox())
        with pytest.raises(poplib.error_proto) as err:
            pop.pass_("password")
    finally:
        pop.close()
    assert err.value.args[0].startswith(b"-ERR")

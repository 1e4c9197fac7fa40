"""The sandbox upstream SMTP server, driven by smtplib and by a raw line client over loopback."""

from __future__ import annotations

import base64
import json
import secrets
import smtplib
import socket
import ssl
import time
import urllib.parse

import httpx
import pytest

from relay.sandbox.lineclient import LineClient
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from relay.sandbox.oauth_grants import pkce_challenge
from relay.sandbox.world import SandboxWorld
from relay.sasl import encode_oauthbearer, encode_xoauth2

MAILBOX = "alice@sandbox.test"
MESSAGE = (b"From: alice@sandbox.test\r\nTo: bob@example.test\r\nSubject: dots\r\n\r\n"
           b".starts with a dot\r\n..two dots\r\n.\r\nnon-ascii \xc3\xa9\r\nlast line\r\n")


def token_via_client_credentials(world: SandboxWorld) -> str:
    r = httpx.post(world.oauth.token_url, data={"grant_type": "client_credentials", "scope": "mail"},
                   auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    return r.json()["access_token"]


def token_via_authorization_code(world: SandboxWorld) -> str:
    verifier, redirect = secrets.token_urlsafe(48), "http://localhost:9999/cb"
    r = httpx.get(world.oauth.authorize_url, params={
        "client_id": DEFAULT_CLIENT_ID, "redirect_uri": redirect, "response_type": "code", "state": "s",
        "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256",
        "scope": "mail offline_access", "login_hint": MAILBOX})
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["location"]).query)["code"][0]
    r = httpx.post(world.oauth.token_url, data={"grant_type": "authorization_code", "code": code,
                                                "redirect_uri": redirect, "code_verifier": verifier,
                                                "client_id": DEFAULT_CLIENT_ID})
    return r.json()["access_token"]


def tls_client(world: SandboxWorld) -> smtplib.SMTP:
    client = smtplib.SMTP(world.host, world.smtp_port, timeout=10)
    client.starttls(context=ssl.create_default_context(cafile=str(world.ca_file)))
    client.ehlo("client.test")
    return client


def authed_line_client(world: SandboxWorld, token: str | None = None) -> LineClient:
    c = LineClient(world.host, world.smtp_port, ca_file=world.ca_file)
    assert c.read_reply()[0] == 220
    c.command("EHLO client.test")
    assert c.command("STARTTLS")[0] == 220
    c.starttls()
    c.command("EHLO client.test")
    token = token or world.oauth.issue_access_token(MAILBOX)
    assert c.command("AUTH XOAUTH2")[0] == 334
    assert c.command(encode_xoauth2(MAILBOX, token))[0] == 235
    return c


@pytest.mark.parametrize("get_token", [token_via_client_credentials, token_via_authorization_code])
def test_starttls_xoauth2_stores_message_byte_exact(sandbox: SandboxWorld, get_token) -> None:
    """smtplib over STARTTLS + two-step XOAUTH2 delivers; the stored bytes and envelope are exact."""
    token = get_token(sandbox)
    with tls_client(sandbox) as client:
        assert client.has_extn("auth") and "XOAUTH2" in client.esmtp_features["auth"]
        code, _ = client.docmd("AUTH", "XOAUTH2")
        assert code == 334
        assert client.docmd(encode_xoauth2(MAILBOX, token))[0] == 235
        refused = client.sendmail(MAILBOX, ["bob@example.test", "carol@example.test"], MESSAGE)
        assert refused == {}
    [msg] = sandbox.smtp.messages()
    assert msg.data == MESSAGE
    assert (msg.mail_from, msg.rcpt_tos, msg.user, msg.seq) == (
        MAILBOX, ("bob@example.test", "carol@example.test"), MAILBOX, 1)
    assert sandbox.smtp.counters["auth_ok"] == 1


def test_initial_response_and_oauthbearer_accepted(sandbox: SandboxWorld) -> None:
    """AUTH XOAUTH2 with an initial response (a >2 KB line) and OAUTHBEARER both succeed."""
    token = sandbox.oauth.issue_access_token(MAILBOX)
    with tls_client(sandbox) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + encode_xoauth2(MAILBOX, token))[0] == 235
    with tls_client(sandbox) as client:
        b64 = encode_oauthbearer(MAILBOX, sandbox.host, sandbox.smtp_port, token)
        assert client.docmd("AUTH", "OAUTHBEARER " + b64)[0] == 235


@pytest.mark.parametrize("case", ["unknown", "other_mailbox", "revoked", "expired"])
def test_bad_token_gets_json_challenge_then_535(sandbox: SandboxWorld, case: str) -> None:
    """A bad token gets 334 + base64 JSON, then after the empty line 535 5.7.8 (Gmail style)."""
    owner = "someone-else@sandbox.test" if case == "other_mailbox" else MAILBOX
    token = sandbox.oauth.issue_access_token(owner)
    if case == "unknown":
        token = "x" * 1600
    elif case == "revoked":
        sandbox.oauth.revoke_access_token(token)
    elif case == "expired":
        sandbox.oauth.expire_all_access_tokens()
    with tls_client(sandbox) as client:
        assert client.docmd("AUTH", "XOAUTH2")[0] == 334
        code, challenge = client.docmd(encode_xoauth2(MAILBOX, token))
        assert code == 334
        expected = {"status": "401", "schemes": "bearer", "scope": "mail"}
        assert json.loads(base64.b64decode(challenge)) == expected
        assert client.docmd("") == (535, b"5.7.8 Username and Password not accepted")
    assert sandbox.smtp.counters["auth_failed"] == 1


def test_microsoft_style_failure_and_cancel(sandbox: SandboxWorld) -> None:
    """Microsoft style answers 535 5.7.3 at once; Gmail style answers a '*' cancel with 501."""
    with tls_client(sandbox) as client:
        client.docmd("AUTH", "XOAUTH2")
        assert client.docmd("*")[0] == 501
    sandbox.smtp.auth_failure_style = "microsoft"
    with tls_client(sandbox) as client:
        client.docmd("AUTH", "XOAUTH2")
        assert client.docmd(encode_xoauth2(MAILBOX, "bad")) == (535, b"5.7.3 Authentication unsuccessful")


def test_auth_before_starttls_and_mail_before_auth_refused(sandbox: SandboxWorld) -> None:
    """Before TLS: no AUTH advertised and AUTH gets 530 5.7.0; MAIL before AUTH gets 530 5.7.0."""
    with smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        code, text = client.docmd("AUTH", "XOAUTH2")
        assert code == 530 and text.startswith(b"5.7.0")
    with tls_client(sandbox) as client:
        assert not client.has_extn("starttls")
        code, text = client.docmd("MAIL", "FROM:<a@b.test>")
        assert (code, text) == (530, b"5.7.0 Authentication required")


def test_size_limit_enforced(sandbox: SandboxWorld) -> None:
    """SIZE is advertised; a too-large SIZE= or body is refused with 552 5.3.4 and not stored."""
    sandbox.smtp.max_message_bytes = 1000
    with authed_line_client(sandbox) as c:
        assert c.command("MAIL FROM:<a@b.test> SIZE=5000")[0] == 552
        assert c.command("MAIL FROM:<a@b.test>")[0] == 250
        assert c.command("RCPT TO:<b@c.test>")[0] == 250
        assert c.command("DATA")[0] == 354
        c.send(b"x" * 5000 + b"\r\n.\r\n")
        code, text = c.read_reply()
        assert code == 552 and text.startswith("5.3.4")
        assert c.command("NOOP")[0] == 250
    assert sandbox.smtp.messages() == []


def test_pipelined_transaction_and_quit_after_dot(sandbox: SandboxWorld) -> None:
    """MAIL/RCPT/DATA, the body and QUIT sent in one write get five replies in order; body is exact."""
    body = b"Subject: p\r\n\r\n" + b"".join(b".line %d\r\n" % i for i in range(2000))
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    with authed_line_client(sandbox) as c:
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<b@c.test>\r\nDATA\r\n" + stuffed + b".\r\nQUIT\r\n")
        assert [c.read_reply()[0] for _ in range(5)] == [250, 250, 354, 250, 221]
    assert sandbox.smtp.wait_for_messages(1)[0].data == body


def test_large_message_is_fast_and_exact(sandbox: SandboxWorld) -> None:
    """A 20 MB message with dot lines arrives byte-exact (bulk DATA reading)."""
    line = b"." + b"a" * 900 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
    with tls_client(sandbox) as client:
        client.docmd("AUTH", "XOAUTH2 " + encode_xoauth2(MAILBOX, sandbox.oauth.issue_access_token(MAILBOX)))
        client.sendmail("a@b.test", ["c@d.test"], body)
    assert sandbox.smtp.messages()[0].data == body


def test_rcpt_mail_data_and_final_reply_switches(sandbox: SandboxWorld) -> None:
    """reject_rcpt, mail_reply, data_reply and final_reply are sent verbatim; nothing is stored."""
    smtp = sandbox.smtp
    smtp.reject_rcpt["nobody@c.test"] = "550 5.1.1 User unknown"
    with authed_line_client(sandbox) as c:
        c.command("MAIL FROM:<a@b.test>")
        assert c.command("RCPT TO:<nobody@c.test>") == (550, "5.1.1 User unknown")
        assert c.command("RCPT TO:<ok@c.test>")[0] == 250
        smtp.data_reply = "451 4.3.0 try later"
        assert c.command("DATA") == (451, "4.3.0 try later")
        smtp.data_reply = None
        smtp.mail_reply = "550 5.7.60 SendAsDenied"
        assert c.command("MAIL FROM:<a@b.test>") == (550, "5.7.60 SendAsDenied")
        smtp.mail_reply = None
        c.command("MAIL FROM:<a@b.test>")
        c.command("RCPT TO:<ok@c.test>")
        smtp.final_reply = "554 5.6.0 content rejected"
        assert c.command("DATA")[0] == 354
        assert c.command("hello\r\n.") == (554, "5.6.0 content rejected")
    assert smtp.messages() == []


def test_greeting_reply_and_never_greet(sandbox: SandboxWorld) -> None:
    """greeting_reply is sent and the connection closed; never_greet sends nothing at all."""
    sandbox.smtp.greeting_reply = "421 4.3.2 busy"
    with LineClient(sandbox.host, sandbox.smtp_port) as c:
        assert c.read_until_eof() == b"421 4.3.2 busy\r\n"
    sandbox.smtp.greeting_reply = None
    sandbox.smtp.never_greet = True
    with LineClient(sandbox.host, sandbox.smtp_port, timeout_s=0.3) as c, pytest.raises(socket.timeout):
        c.read_line()


def test_drop_after_data_bytes_closes_without_storing(sandbox: SandboxWorld) -> None:
    """drop_after_data_bytes closes the connection mid-DATA with no reply and stores nothing."""
    sandbox.smtp.drop_after_data_bytes = 1000
    with authed_line_client(sandbox) as c:
        c.command("MAIL FROM:<a@b.test>")
        c.command("RCPT TO:<b@c.test>")
        assert c.command("DATA")[0] == 354
        c.send(b"y" * 4000 + b"\r\n")
        assert c.read_until_eof() == b""
    assert sandbox.smtp.messages() == []


def test_delay_s_slows_every_reply(sandbox: SandboxWorld) -> None:
    """With delay_s set, a reply takes at least that long (lower bound only)."""
    sandbox.smtp.delay_s = 0.2
    start = time.monotonic()
    with LineClient(sandbox.host, sandbox.smtp_port) as c:
        assert c.read_reply()[0] == 220
        assert c.command("NOOP")[0] == 250
    assert time.monotonic() - start >= 0.4


def test_ehlo_advertises_pipelining_and_chunking_unless_switched_off(sandbox: SandboxWorld) -> None:
    """PIPELINING and CHUNKING are offered by default; the fault switches remove them."""
    with tls_client(sandbox) as client:
        assert client.has_extn("pipelining") and client.has_extn("chunking")
    sandbox.smtp.advertise_pipelining = sandbox.smtp.advertise_chunking = False
    with tls_client(sandbox) as client:
        assert not client.has_extn("pipelining") and not client.has_extn("chunking")


def test_bdat_chunks_are_stored_byte_exact_without_unstuffing(sandbox: SandboxWorld) -> None:
    """BDAT content is raw (no dot-stuffing): dots at line starts and a CRLF.CRLF inside are kept;
    chunk replies come in order, pipelined with the chunks."""
    first, last = b"Subject: b\r\n\r\n.dot\r\n.\r\n", b"..two\r\nend\r\n"
    with authed_line_client(sandbox) as c:
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%s"
               % (len(first), first, len(last), last))
        replies = [c.read_reply() for _ in range(4)]
    assert [code for code, _ in replies] == [250, 250, 250, 250]
    assert replies[2][1] == f"2.0.0 {len(first)} octets received"
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert (msg.data, msg.rcpt_tos) == (first + last, ("c@d.test",))
    [transcript] = sandbox.smtp.transcripts()
    assert transcript.verbs()[-4:] == ["MAIL", "RCPT", "BDAT", "BDAT LAST"]
    assert transcript.message_turns() == 1  # everything in one client write


def test_bdat_out_of_sequence_is_refused_and_its_octets_skipped(sandbox: SandboxWorld) -> None:
    """BDAT without MAIL/RCPT: 503 and the chunk is read and dropped (the next command works);
    DATA after BDAT in one transaction: 503; a malformed BDAT closes the connection."""
    with authed_line_client(sandbox) as c:
        c.send(b"BDAT 6 LAST\r\nNOOP\r\n")
        assert c.read_reply()[0] == 503
        assert c.command("NOOP")[0] == 250
        c.command("MAIL FROM:<a@b.test>")
        c.command("RCPT TO:<c@d.test>")
        c.send(b"BDAT 3\r\nabc")
        assert c.read_reply()[0] == 250
        assert c.command("DATA")[0] == 503
        assert c.command("RSET")[0] == 250
        assert c.command("BDAT x")[0] == 501
        assert c.read_until_eof() == b""
    assert sandbox.smtp.messages() == []


def test_bdat_chunk_refusal_discards_the_message(sandbox: SandboxWorld) -> None:
    """bdat_replies refuses chunk 2: later chunks are discarded (503), LAST stores nothing."""
    sandbox.smtp.bdat_replies = {2: "452 4.3.1 Insufficient system storage"}
    with authed_line_client(sandbox) as c:
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 2\r\nabBDAT 2\r\ncdBDAT 2\r\nef"
               b"BDAT 2 LAST\r\ngh")
        codes = [c.read_reply()[0] for _ in range(6)]
        assert codes == [250, 250, 250, 452, 503, 554]
        sandbox.smtp.bdat_replies = {}
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 4 LAST\r\nok\r\n")
        assert [c.read_reply()[0] for _ in range(3)] == [250, 250, 250]
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"ok\r\n"]


def test_transcript_counts_client_turns_of_a_classic_transaction(sandbox: SandboxWorld) -> None:
    """MAIL, RCPT, DATA and the content each waited for: four turns for one message."""
    with authed_line_client(sandbox) as c:
        c.command("MAIL FROM:<a@b.test>")
        c.command("RCPT TO:<c@d.test>")
        assert c.command("DATA")[0] == 354
        assert c.command("hi\r\n.")[0] == 250
    [transcript] = sandbox.smtp.transcripts()
    assert transcript.verbs()[-4:] == ["MAIL", "RCPT", "DATA", "."]
    assert transcript.message_turns() == 4

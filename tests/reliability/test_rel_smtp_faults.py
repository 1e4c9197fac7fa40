"""SMTP fault matrix over loopback: what the client saw AND what the upstream holds.

Adds what tests/integration/smtp does not cover: every reply class at every stage, a slow
upstream, a plaintext-only upstream (no downgrade), the null reverse-path and SMTP smuggling.
"""

from __future__ import annotations

import smtplib
import time

import pytest
from support.app_harness import wait_settled

from relay.config.model import ListenerConfig, UpstreamEndpoint
from relay.sandbox.smtp_upstream import SandboxSmtpServer
from relay.sasl import encode_plain

from .conftest import PASSWORD, USERNAME, Raw, fast_limits

MSG = b"Subject: t\r\n\r\nbody\r\n"


def _login(raw: Raw) -> None:
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("EHLO c.test").startswith("250")
    assert raw.smtp("AUTH PLAIN " + encode_plain(USERNAME, PASSWORD)).startswith("235")


@pytest.mark.parametrize(("stage", "reply"), [
    ("mail", "451 4.3.0 try later"), ("mail", "550 5.7.60 SendAsDenied"),
    ("rcpt", "450 4.2.1 mailbox busy"), ("rcpt", "550 5.1.1 no such user"),
    ("data", "451 4.3.0 queue full"), ("data", "554 5.6.0 no data"),
    ("final", "451 4.7.1 greylisted"), ("final", "552 5.3.4 too big for us"),
])
def test_upstream_reply_at_each_stage_reaches_client_and_nothing_is_stored(rel_relay, sandbox, stage, reply):
    """A 4xx/5xx at MAIL, RCPT, DATA or after the dot is what the client hears; nothing stored; the
    same session then delivers exactly one copy once the upstream is healthy."""
    relay = rel_relay()
    up = sandbox.smtp
    if stage == "mail":
        up.mail_reply = reply
    elif stage == "rcpt":
        up.reject_rcpt = {"to@x.test": reply}
    elif stage == "data":
        up.advertise_chunking = False  # a reply to DATA needs the DATA path
        up.data_reply = reply
    else:
        up.final_reply = reply
    code = int(reply[:3])
    with relay.smtp() as client:
        with pytest.raises(smtplib.SMTPException) as info:
            client.sendmail("from@x.test", ["to@x.test"], MSG)
        seen = getattr(info.value, "smtp_code", None)
        if seen is None:  # SMTPRecipientsRefused carries the per-recipient replies
            seen = info.value.recipients["to@x.test"][0]  # type: ignore[attr-defined]
        assert seen == code
        assert up.messages() == []
        client.rset()
        up.clear_faults()
        assert client.sendmail("from@x.test", ["to@x.test"], MSG) == {}
    assert [m.data for m in up.wait_for_messages(1)] == [MSG]
    wait_settled(relay, up)
    assert len(up.messages()) == 1


def test_slow_upstream_times_out_with_4xx_and_no_duplicate(rel_relay, sandbox):
    """An upstream slower than upstream_command_timeout_s: the client gets 451 promptly, never 250."""
    relay = rel_relay(limits=fast_limits(upstream_connect_timeout_s=0.5, upstream_command_timeout_s=0.5))
    sandbox.smtp.delay_s = 1.5
    started = time.monotonic()
    with relay.smtp() as client:
        code, _ = client.mail("from@x.test")
    assert code == 451 and time.monotonic() - started < 5
    assert sandbox.smtp.messages() == []


def test_slow_final_reply_is_4xx_never_250(rel_relay, sandbox):
    """The upstream stalls after the final dot past upstream_data_timeout_s: the client hears 451
    (it will retry; at most one copy exists upstream, never a 250 for an unconfirmed message)."""
    relay = rel_relay(limits=fast_limits(upstream_data_timeout_s=0.5))
    raw = Raw(relay.smtp_port)
    _login(raw)
    assert raw.smtp("MAIL FROM:<a@x.test>").startswith("250")
    assert raw.smtp("RCPT TO:<b@x.test>").startswith("250")
    assert raw.smtp("DATA").startswith("354")
    sandbox.smtp.delay_s = 1.5
    reply = raw.smtp(MSG + b".")
    assert reply.startswith("451"), reply
    assert len(sandbox.smtp.messages()) <= 1
    raw.close()


def test_upstream_without_starttls_is_never_used_in_plaintext(rel_relay, sandbox):
    """tls: starttls against an upstream offering no STARTTLS: 451, and no AUTH/MAIL ever sent."""
    plain = SandboxSmtpServer(sandbox.oauth.validate_access_token, sandbox.cert_file, sandbox.key_file,
                              tls_mode="none").start()
    try:
        relay = rel_relay(smtp=UpstreamEndpoint("127.0.0.1", plain.port, "starttls",
                                                ca_file=sandbox.ca_file))
        with relay.smtp() as client:
            code, _ = client.mail("from@x.test")
        assert code == 451
        assert plain.counters.get("auth_ok", 0) == plain.counters.get("auth_failed", 0) == 0
        assert plain.messages() == []
    finally:
        plain.stop()


def test_upstream_tls_wrong_host_name_fails_closed(rel_relay, sandbox):
    """The sandbox certificate is for 127.0.0.1/localhost: reaching it as another name fails, 451."""
    relay = rel_relay(smtp=UpstreamEndpoint("127.0.0.2", sandbox.smtp_port, "starttls",
                                            ca_file=sandbox.ca_file))
    with relay.smtp() as client:
        code, _ = client.mail("from@x.test")
    assert code == 451
    assert sandbox.smtp.counters.get("auth_ok", 0) == 0 and sandbox.smtp.messages() == []


def test_null_reverse_path_is_forwarded_as_null(rel_relay, sandbox):
    """MAIL FROM:<> (a bounce/DSN) is accepted and forwarded upstream as MAIL FROM:<>."""
    relay = rel_relay()
    raw = Raw(relay.smtp_port)
    _login(raw)
    assert raw.smtp("MAIL FROM:<>").startswith("250")
    assert raw.smtp("RCPT TO:<>").startswith("501")
    assert raw.smtp("RCPT TO:<b@x.test>").startswith("250")
    assert raw.smtp("DATA").startswith("354")
    assert raw.smtp(MSG + b".").startswith("250")
    assert raw.smtp("MAIL FROM:<> SIZE=100").startswith("250")
    assert raw.smtp("RSET").startswith("250")
    raw.close()
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert (msg.mail_from, msg.rcpt_tos, msg.data) == ("", ("b@x.test",), MSG)


SMUGGLED_TAIL = (b"MAIL FROM:<ceo@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
                 b"Subject: forged\r\n\r\nforged\r\n")


@pytest.mark.parametrize("bare_lf", ["normalize", "reject"])
@pytest.mark.parametrize("separator", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"], ids=repr)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_smtp_smuggling_is_refused_and_nothing_delivered(rel_relay, sandbox, separator, chunking,
                                                        bare_lf):
    """A smuggled end-of-data plus a second transaction, in both listen.smtp.bare_lf modes: the
    upstream never reads a line end the relay did not, and the client has its reply within 1 s.
    reject: 521 and closed, nothing delivered. normalize: a bare-LF dot ends DATA *here*, so the
    second transaction is the relay's own (answered and checked command by command) and both
    messages arrive with CRLF only. A bare CR next to a dot: 554 5.6.0 in both, session usable."""
    sandbox.smtp.advertise_chunking = chunking  # content by BDAT or by DATA
    relay = rel_relay(smtp_listener=ListenerConfig(True, "127.0.0.1", 0, bare_lf=bare_lf))
    raw = Raw(relay.smtp_port)
    _login(raw)
    assert raw.smtp("MAIL FROM:<a@x.test>").startswith("250")
    assert raw.smtp("RCPT TO:<b@x.test>").startswith("250")
    assert raw.smtp("DATA").startswith("354")
    started = time.monotonic()
    reply = raw.smtp(b"Subject: real\r\n\r\nhi" + separator + SMUGGLED_TAIL + b".")
    assert time.monotonic() - started < 1.0, "no final reply within a second"
    bare_lf_separator = separator.replace(b"\r\n", b"").count(b"\n") > 0
    if bare_lf_separator and bare_lf == "reject":
        assert reply.startswith("521 5.5.2"), reply
        assert raw.closed_by_peer()
        with relay.smtp() as client:  # a later message arrives alone: nothing of the first did
            assert client.sendmail("from@x.test", ["to@x.test"], MSG) == {}
        assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [MSG]
        assert len(sandbox.smtp.messages()) == 1
        return
    if bare_lf_separator:  # normalize
        assert reply.startswith("250"), reply
        assert [raw.smtp_reply()[:3] for _ in range(4)] == ["250", "250", "354", "250"]
        raw.close()
        messages = sandbox.smtp.wait_for_messages(2)
        assert [(m.mail_from, m.data) for m in messages] == [
            ("a@x.test", b"Subject: real\r\n\r\nhi\r\n"),
            ("ceo@x.test", b"Subject: forged\r\n\r\nforged\r\n")]
        return
    assert reply.startswith("554 5.6.0"), reply
    assert raw.smtp("MAIL FROM:<a@x.test>").startswith("250")
    assert raw.smtp("RCPT TO:<b@x.test>").startswith("250")
    assert raw.smtp("DATA").startswith("354")
    assert raw.smtp(MSG + b".").startswith("250")
    raw.close()
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [MSG]
    wait_settled(relay, sandbox.smtp)
    assert len(sandbox.smtp.messages()) == 1

"""Fewer upstream round trips: the delayed sender verdict (MAIL sent with the first RCPT, PIPELINING)
and BDAT content (CHUNKING), against the sandbox upstream over loopback. Every path keeps the
promise: 250 after the final dot only when the upstream accepted, the upstream's own replies per
recipient, and nothing delivered for a message we or the upstream refused."""

from __future__ import annotations

import smtplib
from dataclasses import replace

import pytest
from support.app_harness import wait_settled, wait_until
from support.relay_harness import sandbox_smtp_upstream

from relay.config.model import LimitsConfig, PoolConfig
from relay.sasl import encode_plain
from relay.smtp.bdat import CHUNK_BYTES
from relay.smtp.upstream import UpstreamSmtpSession

from .conftest import PASSWORD, USERNAME, RawClient

MSG = b"Subject: t\r\n\r\n.leading dot\r\n..two\r\nbody\r\n"
LIMITS = LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                      upstream_command_timeout_s=10, upstream_data_timeout_s=10)


def big_message(size: int) -> bytes:
    """About ``size`` bytes of CRLF lines; every 7th starts with '.', so stuffing dots fall on
    chunk boundaries somewhere."""
    lines = [(b"." if i % 7 == 0 else b"") + b"%07d " % i + b"x" * 70 + b"\r\n" for i in range(size // 80)]
    return b"Subject: big\r\n\r\n" + b"".join(lines)


def login(raw: RawClient) -> None:
    assert raw.cmd("EHLO client.test").startswith("250")
    assert raw.cmd("AUTH PLAIN " + encode_plain(USERNAME, PASSWORD)).startswith("235")


def stuffed(content: bytes) -> bytes:
    out = content.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


@pytest.mark.parametrize(("pipelining", "chunking", "setting", "verbs", "turns"), [
    (False, False, True, ["MAIL", "RCPT", "DATA", "."], 4),
    (True, False, True, ["MAIL", "RCPT", "DATA", "."], 3),
    (True, True, True, ["MAIL", "RCPT", "BDAT LAST"], 2),
    (True, True, False, ["MAIL", "RCPT", "DATA", "."], 4),
], ids=["no-pipelining", "pipelining", "pipelining+chunking", "setting-off"])
def test_upstream_round_trips_per_message(start_relay, sandbox, pipelining, chunking, setting, verbs,
                                          turns):
    """Round trips the upstream waits for per message: 4 classic, 3 with MAIL+RCPT in one write, 2
    with BDAT (MAIL+RCPT, then the content with LAST); the endpoint setting pipelining: false
    forces the classic path. The stored bytes are the same on every path."""
    sandbox.smtp.advertise_pipelining, sandbox.smtp.advertise_chunking = pipelining, chunking
    relay = start_relay(smtp=replace(sandbox_smtp_upstream(sandbox), pipelining=setting))
    with relay.smtp() as client:
        assert client.sendmail("app@example.com", ["a@example.com"], MSG) == {}
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert msg.data == MSG
    [transcript] = sandbox.smtp.transcripts()
    start = transcript.verbs().index("MAIL")
    assert transcript.verbs()[start:start + len(verbs)] == verbs
    assert transcript.message_turns() == turns


def test_partial_recipient_refusal_keeps_each_reply_and_delivers_to_the_accepted(start_relay, sandbox):
    """The first RCPT (sent with MAIL) and a later one refused with different replies: each client
    RCPT gets exactly its own upstream reply; only the accepted recipients get the message."""
    sandbox.smtp.reject_rcpt = {"first@example.com": "550 5.1.1 first unknown",
                                "third@example.com": "452 4.2.2 third over quota"}
    relay = start_relay()
    raw = relay.raw()
    login(raw)
    assert raw.cmd("MAIL FROM:<app@example.com>") == "250 2.1.0 Sender OK"
    assert raw.cmd("RCPT TO:<first@example.com>") == "550 5.1.1 first unknown"
    assert raw.cmd("RCPT TO:<second@example.com>") == "250 2.1.5 Recipient OK"
    assert raw.cmd("RCPT TO:<third@example.com>") == "452 4.2.2 third over quota"
    assert raw.cmd("RCPT TO:<fourth@example.com>") == "250 2.1.5 Recipient OK"
    assert raw.cmd("DATA").startswith("354")
    assert raw.cmd(stuffed(MSG) + b".").startswith("250 2.0.0")
    raw.close()
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert (msg.rcpt_tos, msg.data) == (("second@example.com", "fourth@example.com"), MSG)


def test_mail_refused_with_421_is_4xx_at_every_rcpt_and_next_message_reconnects(start_relay, sandbox):
    """A 421 to the delayed MAIL (the upstream closes): every RCPT hears 451 with its text, nothing
    is stored, and the next message goes over a new upstream connection."""
    sandbox.smtp.next_mail_replies = ["421 4.3.2 shutting down"]
    relay = start_relay()
    with relay.smtp() as client:
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("a@example.com") == (451, b"4.3.2 shutting down")
        assert client.rcpt("b@example.com") == (451, b"4.3.2 shutting down")
        client.rset()
        assert client.sendmail("app@example.com", ["a@example.com"], MSG) == {}
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [MSG]
    assert sandbox.smtp.counters["connections"] == 2


def test_mail_without_rcpt_sends_nothing_upstream(start_relay, sandbox):
    """MAIL then RSET (or QUIT): the held MAIL never reaches the upstream."""
    relay = start_relay()
    with relay.smtp() as client:
        assert client.mail("app@example.com")[0] == 250
        assert client.rset()[0] == 250
    [transcript] = sandbox.smtp.transcripts()
    assert "MAIL" not in transcript.verbs() and "RSET" not in transcript.verbs()


def test_refused_last_chunk_gives_its_reply_and_the_session_is_reset_before_reuse(start_relay,
                                                                                  sandbox):
    """The upstream refuses the BDAT LAST of a small message: the client's reply to the final dot
    is that refusal, nothing is stored, and the kept session gets RSET (RFC 3030 leaves the
    transaction open) before the next message goes on it."""
    sandbox.smtp.bdat_replies = {1: "452 4.3.1 Insufficient system storage"}
    relay = start_relay()
    with relay.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("app@example.com", ["a@example.com"], MSG)
        assert (info.value.smtp_code, info.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
        assert sandbox.smtp.messages() == []
        sandbox.smtp.bdat_replies = {}
        assert client.sendmail("app@example.com", ["a@example.com"], MSG) == {}
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [MSG]
    [transcript] = sandbox.smtp.transcripts()
    verbs = transcript.verbs()
    first_last = verbs.index("BDAT LAST")
    assert verbs[first_last + 1:first_last + 3] == ["RSET", "MAIL"]


@pytest.mark.parametrize(("problem", "limits", "reply"), [
    # (a bare LF is a line end under the default listen.smtp.bare_lf: normalize; a bare CR next to
    # a dot is refused in every mode)
    (b"bare CR\r.\r\nMAIL FROM:<x@y>\r\n", LIMITS, "554 5.6.0"),
    (b"y" * 1200 + b"\r\n", LIMITS, "500 5.5.2"),
    (b"", replace(LIMITS, max_message_bytes=700_000), "552 5.3.4"),
], ids=["bare-cr-dot", "line-too-long", "too-big"])
def test_refused_content_after_part_went_upstream_is_never_delivered(start_relay, sandbox, problem,
                                                                     limits, reply):
    """A problem found after part of a large message went upstream (switched from BDAT to DATA:
    smuggling, line length, size): our refusal, the upstream connection closed without the final
    dot, nothing stored; the session goes on."""
    relay = start_relay(limits=limits)
    raw = relay.raw()
    login(raw)
    assert raw.cmd("MAIL FROM:<app@example.com>").startswith("250")
    assert raw.cmd("RCPT TO:<a@example.com>").startswith("250")
    assert raw.cmd("DATA").startswith("354")
    content = big_message(3 * CHUNK_BYTES) + problem + b"after the problem\r\n"
    assert raw.cmd(stuffed(content) + b".").startswith(reply)
    assert raw.cmd("MAIL FROM:<app@example.com>").startswith("250")
    assert raw.cmd("RCPT TO:<a@example.com>").startswith("250")
    assert raw.cmd("DATA").startswith("354")
    assert raw.cmd(stuffed(MSG) + b".").startswith("250")
    raw.close()
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [MSG]
    wait_settled(relay, sandbox.smtp)
    assert len(sandbox.smtp.messages()) == 1
    first = sandbox.smtp.transcripts()[0].verbs()
    assert "DATA" in first and "." not in first and "BDAT" not in first


@pytest.mark.parametrize("size", [CHUNK_BYTES // 2, 2 * CHUNK_BYTES, 3 * 1024 * 1024])
def test_a_message_larger_than_one_chunk_goes_by_data(start_relay, sandbox, size):
    """With CHUNKING, a message that fits one chunk is one BDAT LAST; a larger one is streamed
    with DATA (switched before anything of it went upstream). Both byte-exact."""
    relay = start_relay()
    body = big_message(size)
    with relay.smtp() as client:
        assert client.sendmail("app@example.com", ["a@example.com"], body) == {}
    [msg] = sandbox.smtp.wait_for_messages(1, timeout_s=60)
    assert msg.data == body
    verbs = [v for v in sandbox.smtp.transcripts()[0].verbs() if v in ("DATA", ".", "BDAT", "BDAT LAST")]
    assert verbs == (["BDAT LAST"] if size < CHUNK_BYTES else ["DATA", "."])


def test_upstream_dropping_mid_message_gives_4xx_and_nothing_is_stored(start_relay, sandbox):
    """The upstream connection dies after ~300 KB of a 1 MB message (switched to DATA): 451,
    nothing stored; the next message in the session is delivered over a new connection."""
    sandbox.smtp.drop_after_data_bytes = 300_000
    relay = start_relay()
    with relay.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("app@example.com", ["a@example.com"], big_message(1024 * 1024))
        assert info.value.smtp_code == 451
        assert sandbox.smtp.messages() == []
        sandbox.smtp.drop_after_data_bytes = None
        assert client.sendmail("app@example.com", ["a@example.com"], MSG) == {}
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [MSG]


def test_kept_session_that_lost_its_login_is_replaced_at_the_first_rcpt(start_relay, sandbox):
    """The connection's kept upstream session answers the delayed MAIL with 530 (its login
    expired): the relay logs in afresh and sends MAIL+RCPT again; the client only sees 250s."""
    relay = start_relay()
    with relay.smtp() as client:
        assert client.sendmail("app@example.com", ["a@example.com"], b"one\r\n") == {}
        sandbox.smtp.next_mail_replies = ["530 5.7.0 Authentication required"]
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("b@example.com") == (250, b"2.1.5 Recipient OK")
        assert client.data(b"two\r\n")[0] == 250
    assert [m.data for m in sandbox.smtp.wait_for_messages(2)] == [b"one\r\n", b"two\r\n"]
    assert sandbox.smtp.counters["auth_ok"] == 2
    old, new = sandbox.smtp.transcripts()
    assert old.verbs()[-2:] == ["MAIL", "RCPT"]  # the refused MAIL and its pipelined RCPT
    assert new.verbs()[-4:] == ["MAIL", "RCPT", "BDAT LAST", "QUIT"]


def test_kept_session_that_died_while_idle_is_replaced_at_the_first_rcpt(start_relay, sandbox,
                                                                       monkeypatch):
    """The kept session died between messages but still looks open: MAIL is answered locally, the
    first RCPT finds it dead and the relay retries once on a fresh session."""
    monkeypatch.setattr(UpstreamSmtpSession, "connected", property(lambda self: self._writer is not None))
    relay = start_relay()
    with relay.smtp() as client:
        assert client.sendmail("app@example.com", ["a@example.com"], b"one\r\n") == {}
        assert sandbox.smtp.drop_connections() == 1
        wait_until(lambda: sandbox.smtp.counters["open_connections"] == 0, what="the sandbox to drop it")
        assert client.sendmail("app@example.com", ["a@example.com"], b"two\r\n") == {}
    assert [m.data for m in sandbox.smtp.wait_for_messages(2)] == [b"one\r\n", b"two\r\n"]
    assert sandbox.smtp.counters["connections"] == 2


def test_fresh_session_failing_at_the_first_rcpt_is_4xx_without_retry(start_relay, sandbox):
    """A session opened for this MAIL that then breaks is not retried: the RCPT gets 451 and so
    does every later RCPT of the transaction; nothing is stored."""
    relay = start_relay()
    with relay.smtp() as client:
        assert client.mail("app@example.com")[0] == 250
        sandbox.smtp.drop_connections()
        wait_until(lambda: sandbox.smtp.counters["open_connections"] == 0, what="the sandbox to drop it")
        assert client.rcpt("a@example.com")[0] == 451
        assert client.rcpt("b@example.com")[0] == 451
    assert sandbox.smtp.messages() == []
    assert sandbox.smtp.counters["connections"] == 1


@pytest.fixture
def pooled(start_relay):
    """A relay with upstream_pool enabled (one session per account) in front of the sandbox."""
    return start_relay(limits=LIMITS, upstream_pool=PoolConfig(enabled=True, max_sessions_per_account=1))


def test_pool_gets_the_session_back_after_a_refused_mail_and_a_held_one(pooled, sandbox):
    """Pooling with one session: a MAIL refused at the first RCPT, a MAIL held and then RSET, and
    a client gone after MAIL all leave the session clean and pooled; messages then flow over it."""
    sandbox.smtp.next_mail_replies = ["550 5.7.60 SendAsDenied"]
    with pooled.smtp() as client:
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("a@example.com")[0] == 550
        client.rset()
    with pooled.smtp() as client:
        assert client.mail("app@example.com")[0] == 250
        client.rset()
        assert client.mail("app@example.com")[0] == 250  # QUIT with the MAIL still held
    client = pooled.smtp()
    assert client.mail("app@example.com")[0] == 250
    client.close()  # gone without QUIT, the MAIL still held
    for i in range(3):
        with pooled.smtp() as client:
            assert client.sendmail("app@example.com", ["a@example.com"], b"m%d\r\n" % i) == {}
    assert [m.data for m in sandbox.smtp.wait_for_messages(3)] == [b"m0\r\n", b"m1\r\n", b"m2\r\n"]
    assert sandbox.smtp.counters["connections"] == 1
    pool = pooled.server.handler.pool
    assert pool is not None and pool.sessions("sales") == 1


def test_pool_resets_a_session_after_a_refused_last_chunk(pooled, sandbox):
    """A refused BDAT LAST leaves the upstream transaction open: the session goes back to the pool
    only after an RSET answered 250, and the next message reuses it cleanly."""
    sandbox.smtp.bdat_replies = {1: "452 4.3.1 Insufficient system storage"}
    with pooled.smtp() as client, pytest.raises(smtplib.SMTPDataError):
        client.sendmail("app@example.com", ["a@example.com"], MSG)
    sandbox.smtp.bdat_replies = {}
    with pooled.smtp() as client:
        assert client.sendmail("app@example.com", ["a@example.com"], MSG) == {}
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [MSG]
    [transcript] = sandbox.smtp.transcripts()
    verbs = transcript.verbs()
    assert verbs[verbs.index("BDAT LAST") + 1] == "RSET"

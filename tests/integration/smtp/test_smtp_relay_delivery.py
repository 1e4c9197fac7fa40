"""The SMTP relay forwards sessions to the sandbox upstream: byte-exact, envelope, replies passed on."""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib

import aiosmtplib
import pytest

from .conftest import MAILBOX, PASSWORD, USERNAME


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_message_arrives_upstream_byte_exact_with_envelope(start_relay, sandbox, chunking):
    """8-bit text, 998-octet lines and lines starting with '.' arrive unchanged, with the envelope."""
    sandbox.smtp.advertise_chunking = chunking  # content by BDAT or by DATA
    relay = start_relay()
    body = (b"From: a@example.com\r\nSubject: exact\r\n\r\n"
            b".leading dot\r\n..two dots\r\n.\r\n"
            + "Gr\u00fc\u00dfe, \u2603 8-bit\r\n".encode()
            + b"x" * 998 + b"\r\n" + b"." + b"y" * 997 + b"\r\n"
            + b"bare \r in text\r\nlast line\r\n")
    with relay.smtp() as client:
        refused = client.sendmail("app@example.com", ["one@example.com", "two@example.com"], body,
                                  mail_options=["BODY=8BITMIME"])
    assert refused == {}
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert msg.data == body
    assert msg.mail_from == "app@example.com"
    assert msg.rcpt_tos == ("one@example.com", "two@example.com")
    assert msg.user == MAILBOX
    assert "BODY=8BITMIME" in msg.mail_options


def test_one_rejected_recipient_gets_its_550_and_the_others_the_message(start_relay, sandbox):
    """The client sees the upstream's 550 for one RCPT; the two accepted recipients get the message."""
    sandbox.smtp.reject_rcpt["bad@example.com"] = "550 5.1.1 User unknown here"
    relay = start_relay()
    with relay.smtp() as client:
        refused = client.sendmail("app@example.com",
                                  ["a@example.com", "bad@example.com", "c@example.com"], b"hi\r\n")
    assert refused == {"bad@example.com": (550, b"5.1.1 User unknown here")}
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert msg.rcpt_tos == ("a@example.com", "c@example.com")


SEND_AS_DENIED = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"


def test_upstream_refusing_mail_from_is_passed_on_at_mail_without_pipelining(start_relay, sandbox):
    """Upstream without PIPELINING: its 550 5.7.60 to MAIL reaches the client unchanged, at MAIL."""
    sandbox.smtp.advertise_pipelining = False
    sandbox.smtp.mail_reply = SEND_AS_DENIED
    relay = start_relay()
    with relay.smtp() as client:
        code, text = client.mail("someone@else.example")
    assert (code, text) == (550, b"5.7.60 SMTP; Client does not have permissions to send as this sender")
    assert sandbox.smtp.messages() == []


def test_upstream_refusing_mail_from_is_passed_on_at_every_rcpt_with_pipelining(start_relay, sandbox):
    """Delayed sender verdict: MAIL gets a local 250, every RCPT the upstream's 550 5.7.60 unchanged,
    DATA a 503 (no recipient), nothing is stored; after RSET the same session delivers."""
    sandbox.smtp.next_mail_replies = [SEND_AS_DENIED]
    relay = start_relay()
    with relay.smtp() as client:
        assert client.mail("someone@else.example") == (250, b"2.1.0 Sender OK")
        for rcpt in ("a@example.com", "b@example.com"):
            assert client.rcpt(rcpt) == (550, SEND_AS_DENIED[4:].encode())
        assert client.docmd("DATA")[0] == 503
        assert sandbox.smtp.messages() == []
        client.rset()
        assert client.sendmail("app@example.com", ["a@example.com"], b"after\r\n") == {}
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"after\r\n"]
    [transcript] = sandbox.smtp.transcripts()  # one upstream connection; MAIL sent once per message
    assert transcript.verbs().count("MAIL") == 2


def test_upstream_451_at_data_reaches_client_and_nothing_is_stored(start_relay, sandbox):
    """Upstream 451 to DATA (no CHUNKING: content goes with DATA): the client sees 451 (never 250)
    and nothing is stored.

    The relay answers the client's DATA with its own 354 without waiting for the upstream's, so
    the upstream's refusal arrives as the reply after the final dot; the content is dropped. The
    next message in the same session goes through (the upstream transaction was reset)."""
    sandbox.smtp.advertise_chunking = False
    sandbox.smtp.data_reply = "451 4.3.0 Try again later"
    relay = start_relay()
    with relay.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("app@example.com", ["a@example.com"], b"hi\r\n")
        assert (info.value.smtp_code, info.value.smtp_error) == (451, b"4.3.0 Try again later")
        assert sandbox.smtp.messages() == []
        sandbox.smtp.data_reply = None
        client.sendmail("app@example.com", ["a@example.com"], b"again\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"again\r\n"]


def test_upstream_final_reply_is_the_clients_final_reply(start_relay, sandbox):
    """A 554 after the final dot is what the client gets; a later message in the session works."""
    sandbox.smtp.final_reply = "554 5.6.0 Content rejected"
    relay = start_relay()
    with relay.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("app@example.com", ["a@example.com"], b"spam\r\n")
        assert info.value.smtp_code == 554
        sandbox.smtp.final_reply = None
        client.sendmail("app@example.com", ["a@example.com"], b"ham\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"ham\r\n"]


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_upstream_dropping_mid_data_gives_4xx_and_session_recovers(start_relay, sandbox, chunking):
    """Upstream connection lost during DATA: the client gets 451 4.4.2, never 250; the next works."""
    sandbox.smtp.advertise_chunking = chunking  # content by BDAT or by DATA
    sandbox.smtp.drop_after_data_bytes = 1000
    relay = start_relay()
    with relay.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("app@example.com", ["a@example.com"], b"z" * 500 + b"\r\n" * 2000)
        assert info.value.smtp_code == 451
        sandbox.smtp.drop_after_data_bytes = None
        client.sendmail("app@example.com", ["a@example.com"], b"second\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"second\r\n"]


def test_several_messages_rset_and_noop_in_one_session(start_relay, sandbox):
    """Messages in one session share one upstream session; RSET drops the open transaction."""
    relay = start_relay()
    with relay.smtp() as client:
        client.sendmail("app@example.com", ["a@example.com"], b"one\r\n")
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("dropped@example.com")[0] == 250
        assert client.rset()[0] == 250
        assert client.noop()[0] == 250
        client.sendmail("app@example.com", ["b@example.com"], b"two\r\n")
    msgs = sandbox.smtp.wait_for_messages(2)
    assert [(m.rcpt_tos, m.data) for m in msgs] == [(("a@example.com",), b"one\r\n"),
                                                    (("b@example.com",), b"two\r\n")]
    assert sandbox.smtp.counters.get("auth_ok") == 1


def test_envelope_sender_rewrite_uses_the_account_mailbox(start_relay, sandbox):
    """With envelope_sender: rewrite the upstream MAIL FROM is the account's mailbox."""
    relay = start_relay(envelope_sender="rewrite")
    with relay.smtp() as client:
        client.sendmail("legacy-app@localhost", ["a@example.com"], b"x\r\n")
    assert sandbox.smtp.wait_for_messages(1)[0].mail_from == MAILBOX


def test_trusted_client_sends_without_auth(start_relay, sandbox):
    """A client from allow_without_auth_from needs no AUTH and sends as that account."""
    relay = start_relay(allow_without_auth_from=(ipaddress.ip_network("127.0.0.0/8"),))
    with relay.smtp(login=False) as client:
        client.sendmail("app@example.com", ["a@example.com"], b"trusted\r\n")
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert (msg.user, msg.data) == (MAILBOX, b"trusted\r\n")


def test_declared_size_over_limit_is_refused_before_upstream(start_relay, sandbox):
    """MAIL with SIZE above max_message_bytes gets 552 5.3.4 and nothing reaches the upstream."""
    from relay.config.model import LimitsConfig

    relay = start_relay(limits=LimitsConfig(max_message_bytes=1000, auth_failure_delay_s=0.05))
    with relay.smtp() as client:
        ehlo = client.ehlo()[1].decode()
        assert "SIZE 1000" in ehlo
        code, text = client.mail("app@example.com", ["SIZE=5000"])
    assert (code, text[:5]) == (552, b"5.3.4")
    assert sandbox.smtp.counters.get("connections", 0) == 0


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_message_over_limit_while_receiving_is_refused_and_not_delivered(start_relay, sandbox, chunking):
    """A message bigger than max_message_bytes without SIZE= gets 552 5.3.4 and is never stored."""
    sandbox.smtp.advertise_chunking = chunking  # content by BDAT or by DATA
    from relay.config.model import LimitsConfig

    relay = start_relay(limits=LimitsConfig(max_message_bytes=2000, auth_failure_delay_s=0.05))
    with relay.smtp() as client:
        client.ehlo()
        client.esmtp_features.pop("size", None)  # do not declare SIZE=
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("app@example.com", ["a@example.com"], b"q" * 100 + b"\r\n" * 2000)
        assert (info.value.smtp_code, info.value.smtp_error[:5]) == (552, b"5.3.4")
        client.sendmail("app@example.com", ["a@example.com"], b"small\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"small\r\n"]


async def test_100_concurrent_sessions_of_10_messages_each_delivered_exactly_once(sandbox, tmp_path):
    """1000 messages over 100 parallel sessions all arrive upstream exactly once."""
    from support.app_harness import app_from_yaml, seed_accounts
    from support.relay_harness import authorized_token_set

    from relay.tokens.store import generate_key

    from .conftest import build_config

    config = build_config(sandbox, tmp_path)
    key = generate_key()
    await asyncio.to_thread(seed_accounts, config, key,
                            {"sales": authorized_token_set(sandbox.oauth, "sales", MAILBOX)})
    app = app_from_yaml(config, tmp_path, key=key)  # in this test's loop: aiosmtplib clients share it
    await app.start()
    port = app.smtp_port

    async def session(n: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60) as client:
            await client.login(USERNAME, PASSWORD)
            for i in range(10):
                await client.sendmail("app@example.com", [f"r{n}@example.com"],
                                      f"Subject: {n}-{i}\r\n\r\nbody {n}-{i}\r\n".encode())

    try:
        await asyncio.gather(*(session(n) for n in range(100)))
    finally:
        await app.stop(5)
    msgs = await asyncio.to_thread(sandbox.smtp.wait_for_messages, 1000, 30)
    subjects = sorted(m.data.split(b"\r\n")[0] for m in msgs)
    assert len(msgs) == 1000
    assert subjects == sorted(f"Subject: {n}-{i}".encode() for n in range(100) for i in range(10))



@pytest.fixture
def trusted_and_ops(sandbox, tmp_path):  # type: ignore[no-untyped-def]
    """A relay where 127.0.0.0/8 is trusted as 'sales' and 'ops' (ops-app / "ops pass") logs in."""
    from dataclasses import replace as dc_replace

    from relay.passwords import hash_password

    from .conftest import build_config, launch_relay

    config = build_config(sandbox, tmp_path, allow_without_auth_from=(
        ipaddress.ip_network("127.0.0.0/8"),))
    sales = config.accounts["sales"]
    ops = dc_replace(sales, name="ops", username="ops-app", mailbox="ops@sandbox.test",
                     password_hash=hash_password("ops pass", log2_n=10), allow_without_auth_from=())
    config = dc_replace(config, accounts={"sales": sales, "ops": ops})
    relay = launch_relay(sandbox, config, tmp_path, name="relay-smtp-trusted-and-ops",
                         seed={"sales": MAILBOX, "ops": ops.mailbox})
    yield relay
    relay.stop()


def test_auth_inside_a_transaction_is_refused(trusted_and_ops, sandbox):
    """Issue 22.12: a trusted client mapped to 'sales' at MAIL may not AUTH before the transaction
    ends (503 5.5.1, RFC 4954 4); the transaction goes on as 'sales'."""
    from relay.sasl import encode_plain

    with trusted_and_ops.smtp(login=False) as client:
        client.ehlo()
        assert client.mail("app@example.com")[0] == 250
        code, text = client.docmd("AUTH", "PLAIN " + encode_plain("ops-app", "ops pass"))
        assert (code, text[:5]) == (503, b"5.5.1")
        assert client.rcpt("a@example.com")[0] == 250
        assert client.data(b"as sales\r\n")[0] == 250
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert (msg.user, msg.data) == (MAILBOX, b"as sales\r\n")


def test_a_login_to_another_account_never_uses_the_kept_session(trusted_and_ops, sandbox):
    """Issue 22.12: after a message as the trusted 'sales', AUTH as 'ops' drops the kept 'sales'
    upstream session: ops's mail leaves on a new session logged in as ops's mailbox."""
    from relay.sasl import encode_plain

    with trusted_and_ops.smtp(login=False) as client:
        client.ehlo()
        assert client.sendmail("app@example.com", ["a@example.com"], b"as sales\r\n") == {}
        code, _ = client.docmd("AUTH", "PLAIN " + encode_plain("ops-app", "ops pass"))
        assert code == 235
        assert client.sendmail("app@example.com", ["a@example.com"], b"as ops\r\n") == {}
    first, second = sandbox.smtp.wait_for_messages(2)
    assert (first.user, first.data) == (MAILBOX, b"as sales\r\n")
    assert (second.user, second.data) == ("ops@sandbox.test", b"as ops\r\n")
    assert sandbox.smtp.counters["connections"] == 2

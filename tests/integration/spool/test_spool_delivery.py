"""Spool mode end to end over loopback: 250 queued, delivery by the worker, backoff, DSNs."""

from __future__ import annotations

import email
import os
import stat
import threading
from email.message import Message

from relay.sandbox.smtp_upstream import StoredMessage

from .conftest import StartSpoolRelay, wait_until

DOWN = "421 4.3.2 Service not available, closing transmission channel"


def _message(subject: str, sender: str = "app@sandbox.test", to: str = "someone@example.com") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n"
            f"body of {subject}\r\n.dot line\r\n").encode()


def _subjects(messages: list[StoredMessage]) -> list[str]:
    return [email.message_from_bytes(m.data)["Subject"] for m in messages]


def test_message_is_queued_with_250_and_delivered_byte_exact(start_spool_relay: StartSpoolRelay) -> None:
    """The client hears 250 queued as ID; the worker delivers the exact content and envelope; the
    spool files are 0600 in a 0700 directory and gone after delivery."""
    relay = start_spool_relay()
    with relay.smtp() as client:
        refused = client.sendmail("app@sandbox.test", ["a@example.com", "b@example.com"], _message("one"))
        assert refused == {}
        reply = client.noop()
        assert reply[0] == 250
    stored = relay.sandbox.smtp.wait_for_messages(1)
    assert stored[0].data == _message("one")
    assert stored[0].mail_from == "app@sandbox.test"
    assert stored[0].rcpt_tos == ("a@example.com", "b@example.com")
    assert stored[0].user == "sales@sandbox.test"
    assert stat.S_IMODE(os.stat(relay.store_dir).st_mode) == 0o700
    wait_until(lambda: relay.queued() == 0, what="spool entry removed")
    (transcript,) = [t for t in relay.sandbox.smtp.transcripts() if "MAIL" in t.verbs()]
    assert transcript.message_turns() == 2  # MAIL+RCPT pipelined, then one BDAT LAST


def test_final_reply_names_the_queue_id_and_the_file_is_encrypted(start_spool_relay: StartSpoolRelay) -> None:
    """``250 2.0.0 Ok: queued as ID``; ID.msg is mode 0600 and holds no plaintext of the message."""
    relay = start_spool_relay()
    relay.sandbox.smtp.greeting_reply = DOWN  # keep it in the spool
    with relay.smtp() as client:
        client.mail("app@sandbox.test")
        client.rcpt("secret-recipient@example.com")
        code, text = client.data(_message("confidential-subject"))
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    entry_id = text.decode().rsplit(" ", 1)[1]
    path = relay.store_dir / "queue" / f"{entry_id}.msg"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    blob = path.read_bytes()
    assert b"confidential-subject" not in blob and b"secret-recipient" not in blob


def test_burst_of_500_from_20_clients_while_upstream_down_all_delivered_once_within_rate(
        start_spool_relay: StartSpoolRelay) -> None:
    """Upstream down (421 greeting): 500 messages from 20 concurrent clients all get 250; after the
    upstream recovers every one is delivered exactly once, never more than the per-minute limit in
    any minute of the (injected) clock."""
    per_minute = 150
    relay = start_spool_relay(max_messages_per_minute=per_minute, max_concurrency=3)
    relay.sandbox.smtp.greeting_reply = DOWN
    replies: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        with relay.smtp() as smtp:
            for i in range(25):
                smtp.mail("app@sandbox.test")
                smtp.rcpt("someone@example.com")
                code, _ = smtp.data(_message(f"m{n}-{i}"))
                with lock:
                    replies.append(code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert replies == [250] * 500
    assert relay.queued() == 500
    assert relay.service.store.group_commits < 500  # concurrent sessions shared directory fsyncs
    stats = relay.call(relay.service.stats)
    assert (stats.messages, stats.per_account) == (500, {"sales": 500})
    relay.advance(30)
    assert relay.call(relay.service.stats).oldest_age_s >= 30
    assert relay.sandbox.smtp.messages() == []
    relay.wait_backing_off()
    relay.sandbox.smtp.clear_faults()  # the upstream is back
    delivered = 0
    for _minute in range(10):
        relay.advance(61)  # past the account's backoff and the rate window
        wait_until(lambda d=delivered: len(relay.sandbox.smtp.messages()) >= min(500, d + per_minute),
                   what="a minute's worth of deliveries")
        now = len(relay.sandbox.smtp.messages())
        assert now - delivered <= per_minute, "more than the per-minute limit in one minute"
        delivered = now
        if delivered == 500:
            break
    subjects = _subjects(relay.sandbox.smtp.messages())
    assert sorted(subjects) == sorted(f"m{n}-{i}" for n in range(20) for i in range(25))
    wait_until(lambda: relay.queued() == 0, what="spool empty")
    stats = relay.call(relay.service.stats)
    assert (stats.messages, stats.bytes, stats.oldest_age_s, stats.delivered) == (0, 0, 0.0, 500)


def test_throttled_account_backs_off_and_other_accounts_are_unaffected(
        start_spool_relay: StartSpoolRelay) -> None:
    """432 4.3.2 for one account's message: that account waits its backoff (1 min on the injected
    clock) while another account's message goes at once; after the backoff it is delivered, once."""
    relay = start_spool_relay()
    relay.sandbox.smtp.next_mail_replies = ["432 4.3.2 Concurrent connections limit exceeded"]
    with relay.smtp("sales") as client:
        client.sendmail("sales@sandbox.test", ["x@example.com"], _message("throttled"))
    wait_until(lambda: relay.call(lambda: relay.service.worker.backoff_until("sales")) > 0,
               what="the throttled attempt")
    assert relay.call(lambda: relay.service.worker.backoff_until("ops")) == 0
    with relay.smtp("ops") as client:
        client.sendmail("ops@sandbox.test", ["y@example.com"], _message("other-account"))
    stored = relay.sandbox.smtp.wait_for_messages(1)
    assert _subjects(stored) == ["other-account"]
    relay.advance(30)  # inside the backoff: nothing more
    assert relay.call(lambda: relay.service.worker.backoff_until("sales")) - relay.clock.now() == 30
    assert _subjects(relay.sandbox.smtp.messages()) == ["other-account"]
    relay.advance(31)
    stored = relay.sandbox.smtp.wait_for_messages(2)
    assert sorted(_subjects(stored)) == ["other-account", "throttled"]


def _dsn_parts(msg: Message) -> tuple[Message, Message, Message]:
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, headers = msg.get_payload()  # type: ignore[misc]
    return human, status, headers


def test_permanent_refusal_of_one_recipient_delivers_to_the_others_and_bounces_a_dsn(
        start_spool_relay: StartSpoolRelay) -> None:
    """Partial success: the good recipient gets the message; the sender gets an RFC 3464 DSN
    (multipart/report) naming the refused recipient with the upstream's reply, through the same
    account; the spool is empty afterwards."""
    relay = start_spool_relay()
    relay.sandbox.smtp.reject_rcpt["nobody@example.com"] = "550 5.1.1 User unknown"
    with relay.smtp() as client:
        client.sendmail("app@sandbox.test", ["good@example.com", "nobody@example.com"], _message("partial"))
    stored = relay.sandbox.smtp.wait_for_messages(2)
    original, dsn = stored
    assert original.rcpt_tos == ("good@example.com",)
    assert dsn.rcpt_tos == ("app@sandbox.test",) and dsn.user == "sales@sandbox.test"
    msg = email.message_from_bytes(dsn.data)
    assert msg["To"] == "<app@sandbox.test>" and msg["Auto-Submitted"] == "auto-replied"
    _, status, headers = _dsn_parts(msg)
    report = status.as_string()
    assert "Final-Recipient: rfc822; nobody@example.com" in report
    assert "Action: failed" in report and "Status: 5.1.1" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1 User unknown" in report
    assert "good@example.com" not in report
    assert "Subject: partial" in headers.as_string()
    wait_until(lambda: relay.queued() == 0, what="spool empty")


def test_null_sender_never_gets_a_dsn(start_spool_relay: StartSpoolRelay) -> None:
    """A refused message from <> is dropped with an error log, and no DSN is sent (no loops)."""
    relay = start_spool_relay()
    relay.sandbox.smtp.reject_rcpt["nobody@example.com"] = "550 5.1.1 User unknown"
    with relay.smtp() as client:
        client.sendmail("<>", ["nobody@example.com"], _message("from-null"))
    wait_until(lambda: relay.queued() == 0, what="the message to be dropped")
    assert relay.sandbox.smtp.messages() == []
    assert relay.service.worker.bounced == 1


def test_bounce_to_overrides_the_dsn_recipient(start_spool_relay: StartSpoolRelay) -> None:
    """With spool.bounce_to the DSN goes there instead of to the envelope sender."""
    relay = start_spool_relay(bounce_to="postmaster@sandbox.test")
    relay.sandbox.smtp.reject_rcpt["nobody@example.com"] = "550 5.1.1 User unknown"
    with relay.smtp() as client:
        client.sendmail("app@sandbox.test", ["nobody@example.com"], _message("to-postmaster"))
    (dsn,) = relay.sandbox.smtp.wait_for_messages(1)
    assert dsn.rcpt_tos == ("postmaster@sandbox.test",)


def test_message_older_than_max_age_expires_with_a_dsn(start_spool_relay: StartSpoolRelay) -> None:
    """Upstream down for longer than spool.max_age_s: the message gives up with a DSN (Status
    4.4.7, the last error) once the upstream is reachable again for the DSN."""
    relay = start_spool_relay(max_age_s=3600.0, retry_max_s=600.0)
    relay.sandbox.smtp.greeting_reply = DOWN
    with relay.smtp() as client:
        client.sendmail("app@sandbox.test", ["late@example.com"], _message("too-late"))
    relay.wait_backing_off()
    relay.advance(3601)
    wait_until(lambda: relay.service.worker.bounced == 1, what="expiry")
    wait_until(lambda: relay.call(lambda: relay.service.worker.backoff_until("sales")) > relay.clock.now(),
               what="the DSN's first attempt (upstream still down)")
    relay.sandbox.smtp.clear_faults()
    relay.advance(601)
    (dsn,) = relay.sandbox.smtp.wait_for_messages(1)
    report = _dsn_parts(email.message_from_bytes(dsn.data))[1].as_string()
    assert "Status: 4.4.7" in report and "late@example.com" in report
    assert dsn.rcpt_tos == ("app@sandbox.test",)


def test_temporary_refusal_of_one_recipient_retries_only_that_recipient(
        start_spool_relay: StartSpoolRelay) -> None:
    """450 for one recipient, 250 for the other: the other gets it now; the message stays queued
    for the refused one only and is retried after its delay, so nobody gets a duplicate."""
    relay = start_spool_relay()
    relay.sandbox.smtp.reject_rcpt["busy@example.com"] = "450 4.2.1 Mailbox busy, try later"
    with relay.smtp() as client:
        client.sendmail("app@sandbox.test", ["ok@example.com", "busy@example.com"], _message("twice"))
    (first,) = relay.sandbox.smtp.wait_for_messages(1)
    assert first.rcpt_tos == ("ok@example.com",)
    wait_until(lambda: "1 message(s)" in _listing(relay), what="the deferral to be recorded")
    relay.sandbox.smtp.reject_rcpt.clear()
    relay.advance(61)
    stored = relay.sandbox.smtp.wait_for_messages(2)
    assert stored[1].rcpt_tos == ("busy@example.com",)
    wait_until(lambda: relay.queued() == 0, what="spool empty")
    assert len(relay.sandbox.smtp.messages()) == 2


def _listing(relay: object) -> str:
    from relay.spool.store import SpoolStore

    store: SpoolStore = relay.service.store  # type: ignore[attr-defined]
    states = [store.load_state(i) for i in store.ids()]
    return f"{sum(1 for s in states if s.attempts and s.delivered)} message(s)"


def test_mailbox_session_limit_432_backs_off_without_loss_and_other_accounts_flow(
        start_spool_relay: StartSpoolRelay) -> None:
    """The sandbox answers 432 4.3.2 (Exchange's text) when a mailbox has more than 1 logged-in
    session; with spool.max_concurrency 3 the sales account hits it, backs off and closes its
    sessions, and on later minutes every message is delivered exactly once; ops is unaffected."""
    relay = start_spool_relay(max_concurrency=3)
    smtp = relay.sandbox.smtp
    smtp.max_sessions_per_mailbox = 1
    smtp.greeting_reply = DOWN  # queue them all first, so the account then sends 3 at once
    with relay.smtp("sales") as client:
        for i in range(12):
            client.sendmail("sales@sandbox.test", ["x@example.com"], _message(f"s{i}"))
    relay.wait_backing_off()
    smtp.greeting_reply = None
    with relay.smtp("ops") as client:
        client.sendmail("ops@sandbox.test", ["y@example.com"], _message("ops-message"))
    wait_until(lambda: "ops-message" in _subjects(smtp.messages()), what="the other account's message")
    worker = relay.service.worker

    def sales_delivered() -> int:
        return sum(s.startswith("s") for s in _subjects(smtp.messages()))

    for _ in range(8):  # each round: past the backoff; it ends all delivered or throttled again
        if sales_delivered() == 12:
            break
        relay.advance(3600)
        wait_until(lambda: sales_delivered() == 12 or
                   relay.call(lambda: worker.backoff_until("sales")) > relay.clock.now(), what="a round")
    subjects = _subjects(smtp.messages())
    assert sorted(s for s in subjects if s.startswith("s")) == sorted(f"s{i}" for i in range(12))
    assert smtp.counters.get("concurrency_refusals", 0) >= 1, "the limit was hit"
    wait_until(lambda: relay.queued() == 0, what="spool empty")


def test_upstream_without_pipelining_or_chunking_gets_one_command_per_round_trip_and_data(
        start_spool_relay: StartSpoolRelay) -> None:
    """An upstream that offers neither PIPELINING nor CHUNKING: MAIL, each RCPT, DATA one at a time;
    a dot-stuffed line arrives intact and the refused recipient still gets its DSN."""
    relay = start_spool_relay()
    smtp = relay.sandbox.smtp
    smtp.advertise_pipelining = smtp.advertise_chunking = False
    smtp.reject_rcpt["nobody@example.com"] = "550 5.1.1 User unknown"
    with relay.smtp() as client:
        client.sendmail("app@sandbox.test", ["good@example.com", "nobody@example.com"], _message("plain"))
    original, dsn = smtp.wait_for_messages(2)
    assert original.data == _message("plain") and original.rcpt_tos == ("good@example.com",)
    assert "." in [verb for t in smtp.transcripts() for verb in t.verbs()]  # DATA's final dot
    assert dsn.rcpt_tos == ("app@sandbox.test",)

"""Per-account pacing, the throttling classification, retry delays and the DSN format (pure)."""

from __future__ import annotations

import email

import pytest

from relay.errors import GraphError
from relay.graph.answers import send_reply
from relay.smtp.reply import SmtpReply
from relay.spool.dsn import RecipientFailure, build_dsn, status_of
from relay.spool.entry import Envelope
from relay.spool.schedule import AccountPace, Verdict, is_throttling, retry_delay_s


def _pace(**kw: float) -> AccountPace:
    values = {"max_concurrency": 2, "per_minute": 3, "retry_initial_s": 60.0, "retry_max_s": 3600.0, **kw}
    return AccountPace(int(values["max_concurrency"]), int(values["per_minute"]), values["retry_initial_s"],
                       values["retry_max_s"])


def test_concurrency_cap_and_rate_window() -> None:
    """At most max_concurrency at once; at most per_minute starts in any 60 s."""
    pace = _pace()
    assert pace.next_start(0) == 0
    pace.start(0)
    pace.start(1)
    assert pace.next_start(2) is None  # two in flight
    pace.finish(Verdict.OK, 2)
    pace.start(2)  # the third start within the minute
    pace.finish(Verdict.OK, 3)
    assert pace.next_start(3) == 60  # the oldest start leaves the window at 60
    assert pace.next_start(61) == 61


def test_throttling_backs_off_doubling_to_the_maximum_once_per_outage() -> None:
    """1 min, 2, 4 ... at most the maximum; concurrent failures of one outage count once; success
    clears it."""
    pace = _pace(max_concurrency=5, per_minute=1000, retry_max_s=200.0)
    for _ in range(3):
        pace.start(0)
    for _ in range(3):
        pace.finish(Verdict.THROTTLED, 0)
    assert (pace.backoff_s, pace.next_start(0)) == (60, 60)
    for now, expected in ((60, 120), (180, 200), (380, 200)):
        pace.start(now)
        pace.finish(Verdict.THROTTLED, now)
        assert pace.backoff_s == expected
    pace.start(600)
    pace.finish(Verdict.OK, 600)
    assert pace.next_start(600) == 600


def test_retry_after_replaces_the_doubling_within_bounds() -> None:
    """An upstream's Retry-After is the backoff (not retry_initial_s), at least 1 s and at most
    retry_max_s; a longer one from a concurrent attempt extends the running backoff; a later
    throttle without one doubles from there."""
    pace = _pace(max_concurrency=5, per_minute=1000, retry_max_s=600.0)
    pace.start(0)
    pace.start(0)
    pace.finish(Verdict.THROTTLED, 0, 30.0)
    assert (pace.backoff_s, pace.next_start(0)) == (30, 30)
    pace.finish(Verdict.THROTTLED, 1, 45.0)  # same outage, Graph asks for longer
    assert pace.next_start(1) == 46 and pace.backoff_s == 30
    pace.start(46)
    pace.finish(Verdict.THROTTLED, 46)
    assert pace.backoff_s == 60 and pace.next_start(46) == 106
    for asked, expected in ((0.0, 1.0), (10_000.0, 600.0)):
        pace.start(1000)
        pace.finish(Verdict.THROTTLED, 1000, asked)
        assert pace.backoff_s == expected
        pace.clear_backoff()


def test_graph_throttling_reply_is_throttling() -> None:
    """Graph's 429/503 mapped for the SMTP side (451 4.7.0) backs the spool's account off."""
    for status in (429, 503):
        reply = send_reply(GraphError("throttled", status=status, code="ApplicationThrottled",
                                      retry_after_s=30.0))
        assert is_throttling(reply) and reply.code == 451
    for status, code in ((403, 550), (413, 552)):
        reply = send_reply(GraphError("no", status=status, code="ErrorAccessDenied"))
        assert reply.code == code and reply.is_permanent and not is_throttling(reply)


@pytest.mark.parametrize(("reply", "throttling"), [
    (SmtpReply.make(421, "4.3.2", "closing"), True),
    (SmtpReply.make(432, "4.3.2", "Concurrent connections limit exceeded"), True),
    (SmtpReply.make(451, "4.4.1", "local error"), True),
    (SmtpReply.make(450, "4.2.1", "mailbox busy"), False),
    (SmtpReply.make(452, "4.3.1", "storage"), False),
    (SmtpReply.make(550, "5.3.2", "system not accepting"), False),
])
def test_is_throttling(reply: SmtpReply, throttling: bool) -> None:
    """421, 451 and 4.x x.3.2 back the account off; other replies do not."""
    assert is_throttling(reply) is throttling


def test_retry_delay_doubles_to_the_cap() -> None:
    """Per-message retries: 60, 120, 240 ... at most 3600."""
    assert [retry_delay_s(n, 60, 3600) for n in (0, 1, 2, 3, 7, 100)] == [0, 60, 120, 240, 3600, 3600]


def test_status_of_reads_the_enhanced_code() -> None:
    """The RFC 3463 code from a reply line, else a generic one by class."""
    assert status_of("550 5.1.1 User unknown") == "5.1.1"
    assert status_of("554 Transaction failed") == "5.0.0"


def test_dsn_is_an_rfc3464_multipart_report() -> None:
    """Three parts: human text, message/delivery-status with per-recipient fields, the headers."""
    envelope = Envelope(id="q1", account="sales", sender="app@x.test", recipients=("a@x.test", "b@x.test"),
                        received_at=1_800_000_000)
    content = b"Subject: hello\r\nFrom: app@x.test\r\n\r\nsecret body\r\n"
    raw = build_dsn(envelope, {"b@x.test": RecipientFailure("5.1.1", "550 5.1.1 User unknown")},
                    content=content, from_address="sales@x.test", to_address="app@x.test",
                    reporting_host="relay.test", now=1_800_000_100)
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <sales@x.test>"
    human, status, headers = msg.get_payload()  # type: ignore[misc]
    assert "b@x.test" in human.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    text = status.as_string()
    for field in ("Reporting-MTA: dns; relay.test", "Final-Recipient: rfc822; b@x.test", "Action: failed",
                  "Status: 5.1.1", "Diagnostic-Code: smtp; 550 5.1.1 User unknown"):
        assert field in text
    assert "a@x.test" not in text
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"secret body" not in raw and b"Subject: hello" in raw
    assert all(line.endswith(b"\r") or not line for line in raw.split(b"\n")[:-1])


def test_throttling_lowers_concurrency_and_successes_raise_it_again() -> None:
    """One session fewer after each throttle (never below 1); RAISE_AFTER successes add one back."""
    from relay.spool.schedule import RAISE_AFTER

    pace = _pace(max_concurrency=3, per_minute=10_000)
    pace.start(0)
    pace.finish(Verdict.THROTTLED, 0)
    assert pace.concurrency == 2
    pace.start(100)
    pace.finish(Verdict.THROTTLED, 100)
    pace.start(300)
    pace.finish(Verdict.THROTTLED, 300)
    assert pace.concurrency == 1
    pace.start(1000)
    assert pace.next_start(1000) is None  # one at a time now
    pace.finish(Verdict.OK, 1000)
    for _ in range(RAISE_AFTER - 1):
        pace.start(1001)
        pace.finish(Verdict.OK, 1001)
    assert pace.concurrency == 2

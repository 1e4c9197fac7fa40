"""Pure Graph logic: answers -> replies and advice, envelope -> Bcc, the POP3 maildrop rules."""

from __future__ import annotations

import json

import pytest

from relay.graph.answers import GraphAnswer, advice, graph_error, parse_answer, parse_retry_after, send_reply
from relay.graph.envelope import envelope_into_headers, header_fields, header_recipients
from relay.graph.maildrop import Fetch, Maildrop, PopBodyWriter, SnapshotItem, uidl_for
from relay.graph.send import raw_limit


def error_body(code: str, message: str) -> bytes:
    """A Graph error document."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(("status", "code", "retry", "reply"), [
    (429, "ApplicationThrottled", "30", (451, "4.7.0", "30 seconds")),
    (503, "ServiceUnavailable", "2", (451, "4.7.0", "2 seconds")),
    (429, "ApplicationThrottled", None, (451, "4.7.0", "a few minutes")),
    (413, "RequestEntityTooLarge", None, (552, "5.3.4", "4 MB")),
    (400, "ErrorMessageSizeExceeded", None, (552, "5.3.4", "too big")),
    (403, "ErrorAccessDenied", None, (550, "5.7.1", "Mail.Send")),
    (403, "ErrorSendAsDenied", None, (550, "5.7.1", "Send As")),
    (401, "InvalidAuthenticationToken", None, (454, "4.7.0", "token")),
    (404, "ErrorInvalidUser", None, (451, "4.3.5", "mailbox")),
    (400, "ErrorMimeContentInvalid", None, (554, "5.6.0", "refused the message")),
    (400, "ErrorMimeContentInvalidBase64String", None, (451, "4.4.2", "HTTP 400")),
    (500, "InternalServerError", None, (451, "4.4.2", "try again")),
    (200, None, None, (451, "4.4.2", "HTTP 200")),
])
def test_send_reply_mapping(status: int, code: str | None, retry: str | None,
                            reply: tuple[int, str, str]) -> None:
    """Each Graph answer maps to the documented SMTP reply (a non-202 success is a failure too)."""
    headers = {"Retry-After": retry} if retry else {}
    answer = parse_answer(status, headers, error_body(code, "m") if code else b"")
    got = send_reply(graph_error(answer, "sales", "s@x.test", "sendMail"))
    assert (got.code, got.enhanced_code) == reply[:2]
    assert reply[2] in got.text


def test_parse_answer_reads_code_message_and_wait() -> None:
    """Graph's error code and message come out; the message is one bounded line."""
    answer = parse_answer(429, {"retry-after": "7"}, error_body("ApplicationThrottled", "over\nlimit"))
    assert answer == GraphAnswer(429, "ApplicationThrottled", "over limit", 7.0)
    assert parse_answer(502, {}, b"<html>bad gateway</html>").message == "<html>bad gateway</html>"
    assert parse_answer(400, {}, b'{"error": "x"}').code is None


def test_retry_after_forms() -> None:
    """Delta seconds and HTTP dates are understood; junk is None."""
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_epoch_s=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_advice_names_the_fix() -> None:
    """Operator advice names the permission, setting or command to use."""
    assert "admin consent" in advice(GraphAnswer(403, "ErrorAccessDenied"), "sales", "s@x")
    assert "Test-ApplicationAccessPolicy" in advice(GraphAnswer(403, "ErrorAccessDenied"), "sales", "s@x")
    assert "graph_scopes" in advice(GraphAnswer(401), "sales", "s@x")
    assert "accounts.sales.mailbox" in advice(GraphAnswer(404, "MailboxNotEnabledForRESTAPI"), "sales", "s@x")
    assert "retry after 3 seconds" in advice(GraphAnswer(429, retry_after_s=2.2), "sales", "s@x")


def test_header_fields_and_recipients() -> None:
    """Folded fields, groups and display names are read; the body is never parsed as header."""
    mime = (b"To: Group: a@x, \"B, b\" <b@x>;\r\nCC:\r\n  c@x\r\nSubject: s\r\n\r\nTo: not@header\r\n")
    assert [f.name for f in header_fields(mime)] == [b"to", b"cc", b"subject"]
    assert header_recipients(mime) == ["a@x", "b@x", "c@x"]


@pytest.mark.parametrize(("mime", "rcpts", "expected"), [
    (b"To: a@x\r\n\r\nbody", ["a@x"], b"To: a@x\r\n\r\nbody"),
    (b"To: a@x\r\n\r\nbody", ["A@X", "b@x"], b"To: a@x\r\nBcc: b@x\r\n\r\nbody"),
    (b"To: a@x\r\nBcc:\r\n\r\nb", ["a@x", "z@x"], b"To: a@x\r\nBcc: z@x\r\n\r\nb"),
    (b"To: a@x", ["a@x", "b@x"], b"To: a@x\r\nBcc: b@x\r\n"),
    (b"\r\nno header", ["q@x"], b"Bcc: q@x\r\n\r\nno header"),
    (b"To: a@x\r\n\r\n", ["a@x", "b@x", "b@x"], b"To: a@x\r\nBcc: b@x\r\n\r\n"),
])
def test_envelope_into_headers(mime: bytes, rcpts: list[str], expected: bytes) -> None:
    """Envelope-only recipients are added as Bcc (once each); everything else is byte-identical."""
    result = envelope_into_headers(mime, rcpts)
    assert result.refusal is None and result.mime == expected


def test_many_bcc_addresses_are_folded() -> None:
    """A long Bcc is folded one address per line: no line over 998 octets."""
    rcpts = ["a@x"] + [f"user{n:04d}@example.com" for n in range(200)]
    mime = envelope_into_headers(b"To: a@x\r\n\r\nb", rcpts).mime
    assert max(len(line) for line in mime.split(b"\r\n")) < 100


def test_header_recipient_not_rcpt_is_refused() -> None:
    """A header address without RCPT is refused with 554 5.7.0 naming it."""
    result = envelope_into_headers(b"To: a@x, b@x\r\n\r\n", ["a@x"])
    assert result.refusal is not None and result.refusal.code == 554 and "b@x" in result.refusal.text


def test_raw_limit_is_base64_exact() -> None:
    """The largest MIME whose base64 fits the request limit."""
    assert raw_limit(4_000_000) == 3_000_000
    assert len(__import__("base64").b64encode(b"x" * raw_limit(4_000_000))) == 4_000_000


def test_uidl_is_rfc1939_safe_and_stable() -> None:
    """Short printable ids are used as is; long ids become a 43-character digest, always the same."""
    assert uidl_for("AAMk-short=") == "AAMk-short="
    long_id = "A" * 150
    assert uidl_for(long_id) == uidl_for(long_id) and len(uidl_for(long_id)) == 43
    assert uidl_for(long_id) != uidl_for(long_id + "B")
    assert uidl_for("has space") != "has space"


def test_maildrop_transaction_rules() -> None:
    """STAT/LIST skip deleted messages, DELE twice or out of range fail, RSET unmarks, RETR/TOP fetch."""
    drop = Maildrop([SnapshotItem("i1", 10), SnapshotItem("i2", 20), SnapshotItem("i3", 30)])
    assert drop.answer(b"STAT\r\n") == b"+OK 3 60\r\n"
    assert drop.answer(b"DELE 2\r\n") == b"+OK message 2 deleted\r\n"
    assert drop.answer(b"DELE 2\r\n").startswith(b"-ERR")
    assert drop.answer(b"RETR 2\r\n").startswith(b"-ERR")
    assert drop.answer(b"RETR 4\r\n").startswith(b"-ERR") and drop.answer(b"LIST 0\r\n").startswith(b"-ERR")
    assert drop.answer(b"STAT\r\n") == b"+OK 2 40\r\n"
    assert drop.answer(b"LIST\r\n") == b"+OK 2 messages\r\n1 10\r\n3 30\r\n.\r\n"
    assert drop.answer(b"UIDL 3\r\n") == b"+OK 3 i3\r\n"
    assert drop.answer(b"RETR 3\r\n") == Fetch(3, SnapshotItem("i3", 30), None)
    assert drop.answer(b"TOP 1 5\r\n") == Fetch(1, SnapshotItem("i1", 10), 5)
    assert [i.id for i in drop.to_delete()] == ["i2"]
    drop.answer(b"RSET\r\n")
    assert drop.to_delete() == []


@pytest.mark.parametrize("split", [1, 2, 3, 7, 1000])
def test_body_writer_any_split(split: int) -> None:
    """Any chunking gives the same POP3 body: CRLF ends, stuffed dots, final terminator."""
    content = b"A: b\r\n\r\n.x\nbare\rcr\r\n..y\r\nlast"
    writer = PopBodyWriter()
    out = b"".join(writer.feed(content[i:i + split]) for i in range(0, len(content), split)) + writer.finish()
    assert out == b"A: b\r\n\r\n..x\r\nbare\r\ncr\r\n...y\r\nlast\r\n.\r\n"


def test_body_writer_top_stops_after_n_lines() -> None:
    """TOP: header, blank line, n body lines, then done (the rest is not needed)."""
    writer = PopBodyWriter(max_body_lines=1)
    out = writer.feed(b"H: 1\r\n\r\nline1\r\nline2\r\n")
    assert writer.done and out + writer.finish() == b"H: 1\r\n\r\nline1\r\n.\r\n"
    empty = PopBodyWriter()
    assert empty.finish() == b".\r\n"

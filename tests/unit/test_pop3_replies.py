"""Unit tests for POP3 reply helpers and the multi-line terminator scanner."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import UpstreamProtocolError, UpstreamUnavailable
from relay.pop3.replies import MultilineEndScanner, err, is_multiline, multiline, ok, parse_status
from relay.pop3.upstream import response_code

BODY = b"Subject: x\r\n\r\n..leading dot\r\n.\r\n"  # wire form: '.' stuffed, then terminator


def scan(chunks: list[bytes]) -> tuple[bytes, bytes | None]:
    """Run the scanner over chunks; return (passed-on bytes, all bytes after the terminator)."""
    scanner = MultilineEndScanner()
    passed = bytearray()
    for n, chunk in enumerate(chunks):
        part, rest = scanner.feed(chunk)
        passed += part
        if rest is not None:
            return bytes(passed), rest + b"".join(chunks[n + 1:])
    return bytes(passed), None


def test_scanner_finds_terminator_at_every_split() -> None:
    """The terminator is found exactly, wherever the chunk boundaries fall, leftovers kept."""
    data = BODY + b"+OK next\r\n"
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert scan([data[:i], data[i:j], data[j:]]) == (BODY, b"+OK next\r\n"), (i, j)


def test_scanner_ignores_stuffed_dot_lines_and_handles_empty_body() -> None:
    """'..' lines and '.x' are content; an immediate '.' line is an empty body."""
    assert scan([b"..\r\n.x\r\n"]) == (b"..\r\n.x\r\n", None)
    assert scan([b".\r\n"]) == (b".\r\n", b"")
    assert scan([b".", b"\r", b"\n"]) == (b".\r\n", b"")


def test_scanner_refuses_feeding_after_done() -> None:
    """Feeding a completed scanner is a programming error."""
    scanner = MultilineEndScanner()
    scanner.feed(b".\r\n")
    with pytest.raises(RuntimeError):
        scanner.feed(b"x")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
                max_size=20), st.data())
def test_scanner_matches_a_line_based_reader(lines: list[bytes], data: st.DataObject) -> None:
    """For any stuffed body, the scanner ends exactly where a line-by-line reader would."""
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    wire += b".\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert scan(chunks) == (wire, b"")


def test_reply_builders() -> None:
    """ok/err/multiline build CRLF lines, response codes, dot-stuffing and the terminator."""
    assert ok() == b"+OK\r\n"
    assert ok("hi") == b"+OK hi\r\n"
    assert err("nope", "SYS/TEMP") == b"-ERR [SYS/TEMP] nope\r\n"
    assert multiline(ok(), [b"a", b".b", b"."]) == b"+OK\r\na\r\n..b\r\n..\r\n.\r\n"


def test_parse_status_accepts_ok_err_and_rejects_garbage() -> None:
    """Upstream status lines parse into ok/text; anything else is a protocol error."""
    assert parse_status(b"+OK 2 320\r\n").ok and parse_status(b"+OK 2 320\r\n").text == "2 320"
    status = parse_status(b"-ERR [IN-USE] locked\r\n")
    assert not status.ok and status.text == "[IN-USE] locked"
    assert parse_status(b"+OK\r\n").text == ""
    with pytest.raises(UpstreamProtocolError):
        parse_status(b"* OK imap\r\n")
    assert not issubclass(UpstreamProtocolError, UpstreamUnavailable)


def test_multiline_commands_and_response_codes() -> None:
    """Only LIST/UIDL without argument, RETR, TOP and CAPA have multi-line answers."""
    assert is_multiline("LIST", 0) and not is_multiline("LIST", 1)
    assert is_multiline("UIDL", 0) and not is_multiline("UIDL", 1)
    assert is_multiline("RETR", 1) and is_multiline("TOP", 2) and is_multiline("CAPA", 0)
    assert not any(is_multiline(k, 0) for k in ("STAT", "DELE", "NOOP", "RSET", "QUIT"))
    assert response_code("[SYS/TEMP] try later") == "SYS/TEMP"
    assert response_code("Logged in") is None

"""Unit-level fuzzing of the pure SMTP code: DATA framing (with SMTP smuggling), replies, EHLO.

Example counts and the per-example deadline come from the hypothesis profile (tests/conftest.py);
@example pins inputs that once broke a parser, so every run tries them.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relay.errors import UpstreamProtocolError
from relay.smtp.builtin_replies import add_enhanced_code
from relay.smtp.dataframe import DataFramer, DataProblem
from relay.smtp.reply import EhloCapabilities, ReplyParser, SmtpReply, parse_reply

END = b"\r\n.\r\n"

# Bytes that matter to the framer, mixed with ordinary text, so the generator hits the edge cases.
_pieces = st.sampled_from([b"\r", b"\n", b".", b"\r\n", b".\r\n", b"\r\n.", b"a", b"xyz ", b"\x00",
                           b"\xff", b"..", b"\r\n.\r"])
_content = st.lists(_pieces, max_size=40).map(b"".join)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


def _run(chunks: list[bytes], max_bytes: int = 10_000) -> tuple[DataFramer, bytes, bytes]:
    framer = DataFramer(max_bytes)
    forwarded, leftover = b"", b""
    for chunk in chunks:
        if framer.done:
            leftover += chunk
            continue
        result = framer.feed(chunk)
        forwarded += result.forward
        leftover += result.leftover
    return framer, forwarded, leftover


def _has_bare(data: bytes) -> bool:
    return re.search(rb"(?<!\r)\n|\r(?=\.)|(?<=\.)\r(?!\n)", data) is not None


# --- SMTP smuggling ------------------------------------------------------------------------------

SMUGGLED = b"MAIL FROM:<ceo@victim.test>\r\nRCPT TO:<x@victim.test>\r\nDATA\r\nFake\r\n"


@pytest.mark.parametrize("separator", [
    b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
    b"\n..\n", b"\r\r.\r\n",
], ids=repr)
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 4096])
def test_smuggling_sequences_are_refused_and_never_forwarded(separator: bytes, chunk_size: int) -> None:
    """Every end-of-data look-alike with a bare LF/CR marks the message refused; none of it is forwarded."""
    wire = b"Subject: hi\r\n\r\nbody" + separator + SMUGGLED + END
    chunks = [wire[i:i + chunk_size] for i in range(0, len(wire), chunk_size)]
    framer, forwarded, leftover = _run(chunks)
    assert framer.done and leftover == b""
    assert framer.problem is DataProblem.BARE_LINE_END
    assert not _has_bare(forwarded)
    assert b"MAIL FROM" not in forwarded


def test_clean_crlf_message_with_dots_and_nul_passes() -> None:
    """CRLF lines with stuffed dots, a NUL and a bare CR away from dots are forwarded byte-exact."""
    body = b"Subject: ok\r\n\r\n..leading dot\r\n\x00nul\r\n..\r\nold\rmac\r\nend\r\n"
    framer, forwarded, _ = _run([body + b".\r\n"])
    assert framer.problem is None and forwarded == body


@given(_content, st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
@example(b"body\n.\n" + b"MAIL FROM:<a@b>\r\n", [5, 6])  # SMTP smuggling, the end split
@example(b"x\r\n.\r", [3, 4])
def test_framer_any_chunking_same_result(content: bytes, cuts: list[int]) -> None:
    """Any content, cut anywhere: same forwarded bytes and verdict as one chunk; no exception."""
    wire = content + END
    whole = _run([wire])
    parts = _run(_split(wire, cuts))
    assert whole[0].done and parts[0].done
    assert (whole[0].problem, whole[2]) == (parts[0].problem, parts[2])
    if whole[0].problem is None:
        assert whole[1] == parts[1]
    else:  # streaming: a split may forward a clean prefix before the refusal, never more
        assert whole[1] == b"" or parts[1].startswith(whole[1]) or whole[1].startswith(parts[1])
        assert not _has_bare(parts[1])
    # The oracle: the content is everything before the first CRLF.CRLF (DATA's own CRLF counts).
    search = b"\r\n" + wire
    framed = search[2:search.find(END) + 2]
    framer, forwarded, _ = whole
    if _has_bare(framed):
        assert framer.problem is DataProblem.BARE_LINE_END
        assert not _has_bare(forwarded)
    else:
        assert framer.problem is None and forwarded == framed


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=400), max_size=6),
       st.integers(min_value=0, max_value=400))
def test_framer_never_raises_on_random_bytes(data: bytes, cuts: list[int], max_bytes: int) -> None:
    """Random bytes in random chunks: only the documented ValueError after the end, never others."""
    framer = DataFramer(max_bytes)
    total_forwarded = 0
    for chunk in _split(data, cuts):
        if framer.done:
            with pytest.raises(ValueError):
                framer.feed(chunk)
            break
        result = framer.feed(chunk)
        total_forwarded += len(result.forward)
    assert total_forwarded <= max_bytes
    if framer.problem is None and total_forwarded:
        assert framer.received_bytes <= max_bytes


# --- replies ---------------------------------------------------------------------------------------

_reply_piece = st.sampled_from([b"250", b"354", b"421", b"550", b"999", b"25", b"2x0", b" ", b"-", b"x",
                                b"5.7.3", b"2.0.0", b"SIZE", b"=", b"\xc2\xb9", b"\xff", b"\r", b"\x00",
                                b"AUTH", b"PLAIN", b"8BITMIME", b"12"])
_reply_line = st.lists(_reply_piece, max_size=8).map(b"".join)


@given(st.lists(_reply_line, min_size=1, max_size=6))
@example(["25\u00b9 ok".encode()])  # a non-ASCII digit once raised ValueError, not a protocol error
@example([b"250-x", "250 SIZE \u00b2".encode()])
def test_reply_parsing_raises_only_protocol_errors(lines: list[bytes]) -> None:
    """Arbitrary reply lines through ReplyParser, parse_reply, EhloCapabilities and the enhanced-code
    rewriter: a value or UpstreamProtocolError, never another exception."""
    parser = ReplyParser()
    for raw in lines:
        line = raw + b"\r\n"  # as the reader cuts them: at LF
        try:
            reply = parser.feed_line(line)
        except UpstreamProtocolError:
            parser = ReplyParser()
            continue
        if reply is not None:
            assert 200 <= reply.code <= 599
            rendered = reply.render()
            assert parse_reply(rendered.encode() + b"\r\n").code == reply.code
            caps = EhloCapabilities.parse(reply)
            assert caps.size is None or caps.size >= 0
            assert caps.effective_size_limit(1000) <= 1000
    try:
        whole = parse_reply(b"\r\n".join(lines))
    except UpstreamProtocolError:
        whole = None
    assert whole is None or lines[0][:3] == str(whole.code).encode()
    status = lines[0].decode("utf-8", "replace")
    assert add_enhanced_code(status)[:3] == status[:3] or status in ("250 OK", "221 Bye")


def test_reply_with_non_ascii_digit_code_is_a_protocol_error() -> None:
    """'25¹' is not a reply code: UpstreamProtocolError, not ValueError (regression)."""
    with pytest.raises(UpstreamProtocolError):
        ReplyParser().feed_line("25\u00b9 ok\r\n".encode())
    assert EhloCapabilities.parse(SmtpReply(250, None, ("x", "SIZE \u00b2"))).size == 0

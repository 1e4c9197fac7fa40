"""Unit tests for relay.smtp.dataframe: end of DATA, byte-exact forwarding, size/line limits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp.dataframe import DataFramer, DataProblem


def _stuff(content: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", content)


def _run(wire: bytes, splits: list[int], max_bytes: int = 10**9) -> tuple[bytes, DataFramer, bytes]:
    framer = DataFramer(max_bytes)
    out, leftover, pos = [], b"", 0
    for cut in [*sorted(splits), len(wire)]:
        chunk, pos = wire[pos:cut], cut
        if framer.done:
            leftover += chunk
            continue
        result = framer.feed(chunk)
        out.append(result.forward)
        leftover += result.leftover
    return b"".join(out), framer, leftover


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"Subject: x\r\n\r\nbody\r\n",
        b".\r\n",  # a content line that is a lone dot (stuffed to '..')
        b"..\r\n.x\r\n",
        b"\r\n",
        b"line\r\n.\r\nafter\r\n",
        "8-bit: Gr\u00fc\u00dfe \u2603\r\n".encode(),
        b"x" * 998 + b"\r\n" + b"." + b"y" * 997 + b"\r\n",
    ],
)
def test_forwarded_bytes_are_the_clients_wire_bytes_for_every_split(content):
    """Whatever the chunking, the forwarded bytes equal the client's stuffed content exactly."""
    wire = _stuff(content) + b".\r\nQUIT\r\n"
    for cut in range(len(wire) + 1):
        forwarded, framer, leftover = _run(wire, [cut])
        assert framer.done and framer.ok
        assert forwarded == _stuff(content)
        assert leftover == b"QUIT\r\n"


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
                   max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=6),
)
def test_framing_is_independent_of_chunk_boundaries(lines, cuts):
    """Random content split at random places is forwarded byte-exact and ends at the terminator."""
    content = b"".join(line.rstrip(b"\r") + b"\r\n" for line in lines)
    wire = _stuff(content) + b".\r\n"
    forwarded, framer, leftover = _run(wire, [c for c in cuts if c <= len(wire)])
    assert (forwarded, framer.done, leftover) == (_stuff(content), True, b"")


def test_terminator_is_not_forwarded_and_held_dot_is_released_when_not_an_end():
    """A '.' at a line start is held back until the next byte shows it is content."""
    framer = DataFramer(100)
    assert framer.feed(b"a\r\n.").forward == b"a\r\n"
    assert framer.feed(b".b\r\n").forward == b"..b\r\n"
    result = framer.feed(b".\r\n")
    assert result.done and result.forward == b""


def test_not_done_without_terminator():
    """Content without the final dot line never completes."""
    _, framer, _ = _run(b"hello\r\n.x\r\n..\r\n", [3, 7])
    assert not framer.done


def test_feeding_after_the_end_is_an_error():
    """The framer refuses input after the end of DATA (the caller must stop reading)."""
    framer = DataFramer(10)
    framer.feed(b".\r\n")
    with pytest.raises(ValueError):
        framer.feed(b"x")


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        (b"x" * 998, True),
        (b"x" * 999, False),
        (b"." + b"x" * 997, True),  # stuffed dot does not count: 998 text octets
        (b".." + b"x" * 997, True),  # unstuffed: "." + 997 = 998 text octets
        (b".." + b"x" * 998, False),  # 999 text octets after unstuffing
        (b"x" * 997 + b"\r", True),  # a bare CR is text: 997 + CR = 998
        (b"x" * 998 + b"\r", False),  # 998 + CR = 999 text octets
        (b"x" * 5000, False),
    ],
)
def test_line_length_limit_is_998_text_octets(line, ok):
    """A text line may hold 998 octets before CRLF (plus a stuffing dot); longer is refused."""
    for cut in (0, 1, 500, 998, len(line), len(line) + 1):
        _forwarded, framer, _ = _run(b"ok\r\n" + line + b"\r\nnext\r\n.\r\n", [cut])
        assert framer.done
        assert framer.ok is ok
        assert framer.problem is (None if ok else DataProblem.LINE_TOO_LONG)


def test_size_limit_stops_forwarding_but_finds_the_end():
    """Past max_bytes nothing more is forwarded; the end of DATA is still recognised."""
    wire = b"a" * 50 + b"\r\n" + b"b" * 50 + b"\r\n.\r\n"
    forwarded, framer, leftover = _run(wire, [10, 60, 80], max_bytes=60)
    assert framer.done and framer.problem is DataProblem.TOO_BIG
    assert len(forwarded) <= 60
    assert framer.received_bytes == 104 and leftover == b""


def test_size_exactly_at_the_limit_is_accepted():
    """A message of exactly max_bytes is fine."""
    content = b"a" * 98 + b"\r\n"
    _, framer, _ = _run(content + b".\r\n", [], max_bytes=100)
    assert framer.ok and framer.received_bytes == 100

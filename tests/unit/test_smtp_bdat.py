"""BDAT without sockets: dot-unstuffing across every chunk split, and the one LAST chunk's framing
and CRLF rule."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp.bdat import Unstuffer, last_chunk, unstuff
from relay.smtp.dataframe import DataFramer


def reference_unstuff(wire: bytes) -> bytes:
    """What an SMTP server stores for DATA wire content (RFC 5321 4.5.2): the first '.' of every
    line removed, the message starting a line (as the sandbox upstream does it)."""
    return (b"\r\n" + wire).replace(b"\r\n.", b"\r\n")[2:]


def unstuff_in_pieces(wire: bytes, cuts: tuple[int, ...]) -> bytes:
    unstuffer = Unstuffer()
    bounds = [0, *sorted(cuts), len(wire)]
    return b"".join(unstuffer.feed(wire[a:b]) for a, b in itertools.pairwise(bounds))


def stuff(content: bytes) -> bytes:
    """Client-side dot-stuffing (what the client puts on the wire for ``content``)."""
    out = content.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


TRICKY = [
    b"",
    b".",
    b"..",
    b"...\r\n",
    b".\r\n",
    b"..\r\n",
    b".a\r\n..b\r\n...c\r\n",
    b"a\r\n.\r\n.\r\nb\r\n",
    b"a\r\n..\r\n.\r\n",
    b"x\r.y\r\n.z\r\n",
    b"\r\n\r\n.\r\n..\r\n",
    b"no trailing crlf",
    b"ends with dot line\r\n.",
    b"\r\r\n.\r\n",
    b"a\rb\r\n.c\rd\r\n",
]


@pytest.mark.parametrize("wire", TRICKY, ids=repr)
def test_unstuffing_is_the_same_for_every_split_into_up_to_three_pieces(wire: bytes) -> None:
    """Every one- and two-cut split (including empty pieces) gives the reference result."""
    expected = reference_unstuff(wire)
    positions = range(len(wire) + 1)
    for cuts in itertools.chain(((),), ((c,) for c in positions),
                                itertools.combinations_with_replacement(positions, 2)):
        assert unstuff_in_pieces(wire, cuts) == expected, cuts


def test_byte_by_byte_unstuffing_of_the_tricky_inputs() -> None:
    """Feeding one byte at a time: every boundary is a chunk boundary."""
    for wire in TRICKY:
        assert unstuff_in_pieces(wire, tuple(range(1, len(wire)))) == reference_unstuff(wire)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=60).map(
    lambda b: bytes(b".\r\na"[x % 4] for x in b)), st.lists(st.integers(0, 60), max_size=6))
def test_unstuffing_random_dot_cr_lf_soup_at_random_splits(wire: bytes, cuts: list[int]) -> None:
    """Any mix of '.', CR, LF and text, split anywhere, unstuffs like the whole."""
    assert unstuff_in_pieces(wire, tuple(c for c in cuts if c <= len(wire))) == reference_unstuff(wire)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b".", b"..", b"a", b"\r\n", b".\r\n", b"x.y"]), max_size=30),
       st.lists(st.integers(1, 200), min_size=1, max_size=8))
def test_framer_output_unstuffs_to_the_client_content(parts: list[bytes], sizes: list[int]) -> None:
    """Client content, stuffed and framed in arbitrary client chunks, comes out of the unstuffer
    exactly as the client meant it (CRLF-terminated content, as DATA delivers it)."""
    content = b"".join(parts)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    wire = stuff(content) + b".\r\n"
    framer, unstuffer, out, pos = DataFramer(10**6), Unstuffer(), [], 0
    for size in itertools.cycle(sizes):
        assert pos < len(wire), "the framer never found the end"
        result = framer.feed(wire[pos:pos + size])
        pos += size
        out.append(unstuffer.feed(result.forward))
        if result.done:
            break
    assert framer.ok
    assert b"".join(out) == content


def test_small_message_is_one_last_chunk_with_the_unstuffed_content() -> None:
    """A whole message: a single 'BDAT n LAST' write with the unstuffed content."""
    content = unstuff(b"Subject: x\r\n\r\n..dot\r\nend\r\n")
    assert content == b"Subject: x\r\n\r\n.dot\r\nend\r\n"
    assert last_chunk([content[:5], b"", content[5:]]) == b"BDAT %d LAST\r\n" % len(content) + content


def test_empty_message_and_missing_final_crlf() -> None:
    """An empty message is 'BDAT 0 LAST'; content not ending in CRLF gets one (as DATA adds it)."""
    assert last_chunk([b"", b""]) == b"BDAT 0 LAST\r\n"
    assert last_chunk([b"no newline"]) == b"BDAT 12 LAST\r\nno newline\r\n"
    assert last_chunk([b"split\r", b"", b"\n"]) == b"BDAT 7 LAST\r\nsplit\r\n"
    assert last_chunk([b"lf only", b"\n", b""]) == b"BDAT 10 LAST\r\nlf only\n\r\n"

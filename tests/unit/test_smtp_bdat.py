"""BDAT without sockets: dot-unstuffing across every chunk split, and BdatTransfer's chunking, CRLF
rule and pipelined chunk replies against a fake upstream session."""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import UpstreamUnavailable
from relay.smtp.bdat import BdatTransfer, Unstuffer
from relay.smtp.dataframe import DataFramer
from relay.smtp.reply import SmtpReply, parse_reply


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


class FakeUpstream:
    """Records writes; answers chunks from a script (``replies``), arriving at once or later."""

    data_timeout_s = 1.0

    def __init__(self, replies: list[str] | None = None, *, arrived: bool = True) -> None:
        self.writes: list[bytes] = []
        self.script = deque(parse_reply(r.encode() + b"\r\n") for r in replies or [])
        self.arrived = arrived  # replies to sent chunks are already buffered
        self.unread = 0

    async def send_bytes(self, data: bytes, what: str) -> None:
        self.writes.append(data)
        self.unread += 1

    @property
    def reply_waiting(self) -> bool:
        return self.arrived and self.unread > 0

    async def read_reply(self, what: str, timeout_s: float | None = None) -> SmtpReply:
        if not self.unread:
            raise UpstreamUnavailable("read without a command")
        self.unread -= 1
        return self.script.popleft() if self.script else parse_reply(b"250 2.0.0 OK\r\n")


def transfer(up: FakeUpstream, chunk_bytes: int = 100) -> BdatTransfer:
    return BdatTransfer(up, chunk_bytes=chunk_bytes)  # type: ignore[arg-type]


async def test_small_message_is_one_write_with_last() -> None:
    """Content below the chunk size: a single 'BDAT n LAST' write with the unstuffed content."""
    up = FakeUpstream()
    t = transfer(up)
    assert not t.add(b"Subject: x\r\n\r\n..dot\r\n")
    reply, sent = await t.finish(b"end\r\n")
    assert (reply.code, sent) == (250, True)
    content = b"Subject: x\r\n\r\n.dot\r\nend\r\n"
    assert up.writes == [b"BDAT %d LAST\r\n" % len(content) + content]


async def test_empty_message_and_missing_final_crlf() -> None:
    """An empty message is 'BDAT 0 LAST'; content not ending in CRLF gets one (as DATA adds it)."""
    up = FakeUpstream()
    await transfer(up).finish(b"")
    assert up.writes == [b"BDAT 0 LAST\r\n"]
    up = FakeUpstream()
    await transfer(up).finish(b"no newline")
    assert up.writes == [b"BDAT 12 LAST\r\nno newline\r\n"]


async def test_big_content_goes_in_coalesced_chunks_and_all_replies_are_read() -> None:
    """Small client pieces are coalesced into chunks of at least chunk_bytes; LAST carries the rest
    and goes only after every chunk reply was read."""
    up = FakeUpstream(arrived=False)
    t = transfer(up, chunk_bytes=100)
    for _ in range(50):
        if t.add(b"0123456789abcdefghi\r\n"):
            assert await t.send_chunk() is None
    reply, sent = await t.finish(b"")
    assert (reply.code, sent) == (250, True)
    body = b"".join(w.split(b"\r\n", 1)[1] for w in up.writes)
    assert body == b"0123456789abcdefghi\r\n" * 50
    headers = [w.split(b"\r\n", 1)[0] for w in up.writes]
    assert all(h.startswith(b"BDAT ") and int(h.split()[1]) >= 100 for h in headers[:-1])
    assert headers[-1].endswith(b" LAST") and not any(h.endswith(b"LAST") for h in headers[:-1])
    assert up.unread == 0


async def test_refused_chunk_seen_early_stops_the_transfer() -> None:
    """A refusal of chunk 1 that already arrived: the next chunk is not sent, it is returned."""
    up = FakeUpstream(["452 4.3.1 Insufficient system storage"])
    t = transfer(up, chunk_bytes=10)
    assert t.add(b"a" * 10 + b"\r\n")
    assert await t.send_chunk() is None
    assert t.add(b"b" * 10 + b"\r\n")
    refusal = await t.send_chunk()
    assert refusal is not None and refusal.one_line() == "452 4.3.1 Insufficient system storage"
    assert len(up.writes) == 1


async def test_refused_chunk_read_at_the_end_means_last_is_never_sent() -> None:
    """Chunk replies not yet arrived while streaming: finish reads them first; a refusal of any
    chunk is returned with False and LAST is never written."""
    up = FakeUpstream(["250 2.0.0 ok", "554 5.6.0 chunk refused"], arrived=False)
    t = transfer(up, chunk_bytes=10)
    for piece in (b"a" * 10, b"b" * 10, b"c" * 10):
        assert t.add(piece + b"\r\n")
        assert await t.send_chunk() is None
    reply, sent = await t.finish(b"tail\r\n")
    assert (reply.one_line(), sent) == ("554 5.6.0 chunk refused", False)
    assert len(up.writes) == 3 and not any(b"LAST" in w.split(b"\r\n", 1)[0] for w in up.writes)

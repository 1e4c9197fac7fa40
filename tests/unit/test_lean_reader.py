"""LeanStreamReader reads exactly what asyncio's StreamReader reads, for the same arrivals."""

from __future__ import annotations

import asyncio

import pytest

from relay.upstream.reader import LeanStreamReader

# (arrivals, reads): each read is ("until", separator) or ("read", n); an arrival of None is EOF.
SCENARIOS = [
    ([b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n"], [("until", b"\n"), ("until", b"\n")]),
    ([b"250 OK\r\n250", b" OK\r\n"], [("until", b"\n"), ("until", b"\n")]),
    ([b"par", b"tial", b" line\r", b"\n"], [("until", b"\n")]),
    ([b"no end", None], [("until", b"\n")]),
    ([None], [("until", b"\n"), ("read", 10)]),
    ([b"x" * 40 + b"\n"], [("until", b"\n")]),  # longer than the limit (32)
    ([b"x" * 20, b"y" * 20], [("until", b"\n")]),  # no separator within the limit
    ([b"abc\r\n.\r\n", b"tail"], [("until", b"\r\n.\r\n"), ("read", 2), ("read", 10)]),
    ([b"0123456789", None], [("read", 4), ("read", 100), ("read", 5)]),
    ([b"a\nb\nc"], [("until", b"\n"), ("read", 1), ("until", b"\n"), ("read", 0)]),
]


async def _run(reader: asyncio.StreamReader, arrivals: list[bytes | None],
               reads: list[tuple[str, object]]) -> list[object]:
    async def feed() -> None:
        for data in arrivals:
            await asyncio.sleep(0)
            if data is None:
                reader.feed_eof()
            else:
                reader.feed_data(data)

    feeder = asyncio.ensure_future(feed())
    out: list[object] = []
    for kind, arg in reads:
        try:
            if kind == "until":
                assert isinstance(arg, bytes)
                out.append(await asyncio.wait_for(reader.readuntil(arg), 1))
            else:
                assert isinstance(arg, int)
                out.append(await asyncio.wait_for(reader.read(arg), 1))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            out.append((type(exc).__name__, exc.args, getattr(exc, "partial", None)))
        except TimeoutError:
            out.append("timeout")
    await feeder
    return out


@pytest.mark.parametrize(("arrivals", "reads"), SCENARIOS)
def test_same_results_as_stream_reader(arrivals: list[bytes | None],
                                       reads: list[tuple[str, object]]) -> None:
    """Every read returns (or raises) what StreamReader's returns for the same arrivals."""
    async def both() -> tuple[list[object], list[object]]:
        plain = await _run(asyncio.StreamReader(limit=32), arrivals, reads)
        lean = await _run(LeanStreamReader(limit=32), arrivals, reads)
        return plain, lean

    plain, lean = asyncio.run(both())
    assert lean == plain


def test_wait_lines_wakes_once_for_two_lines_or_at_eof() -> None:
    """wait_lines(2) returns only once two line ends are buffered, or at EOF."""
    async def scenario() -> tuple[bool, bool, bytes, bool]:
        reader = LeanStreamReader(limit=1024)
        waiting = asyncio.ensure_future(reader.wait_lines(2))
        reader.feed_data(b"250 OK\r\n")
        await asyncio.sleep(0.01)
        after_one = waiting.done()
        reader.feed_data(b"250 OK\r\n")
        await asyncio.wait_for(waiting, 1)
        first = await reader.readuntil()
        eof_reader = LeanStreamReader(limit=1024)
        at_eof = asyncio.ensure_future(eof_reader.wait_lines(2))
        eof_reader.feed_eof()
        await asyncio.wait_for(at_eof, 1)
        return after_one, waiting.done(), first, at_eof.done()

    after_one, done, first, eof_done = asyncio.run(scenario())
    assert not after_one
    assert done and first == b"250 OK\r\n"
    assert eof_done


def test_error_set_while_waiting_is_raised() -> None:
    """An exception set on the reader (a timeout, a lost connection) ends a waiting read."""
    async def scenario() -> None:
        reader = LeanStreamReader(limit=1024)
        pending = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0)
        reader.set_exception(TimeoutError())
        await asyncio.wait_for(pending, 1)

    with pytest.raises(TimeoutError):
        asyncio.run(scenario())


def test_reading_resumes_a_paused_transport() -> None:
    """Over twice the limit buffered, the transport is paused; reading it down resumes it."""
    class Transport:
        paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

    async def scenario() -> tuple[bool, bool]:
        reader = LeanStreamReader(limit=8)
        transport = Transport()
        reader.set_transport(transport)  # type: ignore[arg-type]
        reader.feed_data(b"line\n" * 5)
        paused = transport.paused
        for _ in range(5):
            await reader.readuntil()
        return paused, transport.paused

    paused, still_paused = asyncio.run(scenario())
    assert paused and not still_paused

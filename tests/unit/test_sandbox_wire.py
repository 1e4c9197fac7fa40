"""Pure pieces of the sandbox: DATA/line framing, byte-stuffing, TOP, PKCE, redirect matching, JWTs."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.sandbox.lines import BufferedLines, LineTooLong
from relay.sandbox.oauth_grants import pkce_challenge, redirect_uri_matches
from relay.sandbox.oauth_jwt import (
    JwtRejected,
    generate_rsa_key_pem,
    sign_service_account_jwt,
    verify_service_account_jwt,
)
from relay.sandbox.pop3_upstream import stuff_chunk, top_of

NOW = 1_700_000_000.0
AUD = "http://127.0.0.1:1/token"


def reader_with(*pieces: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    return reader


def split_everywhere(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:]] for i in range(len(data) + 1)]


WIRE = b"Subject: x\r\n\r\n..dot\r\n..\r\n\r\nend\r\n.\r\nNOOP\r\n"
BODY = b"Subject: x\r\n\r\n.dot\r\n.\r\n\r\nend\r\n"


async def test_dot_terminated_read_at_every_split_keeps_pipelined_rest() -> None:
    """DATA framing gives the same unstuffed body and leftover command for every split of the input."""
    for pieces in split_everywhere(WIRE):
        lines = BufferedLines(reader_with(*pieces))
        assert await lines.read_dot_terminated(10_000) == (BODY, False)
        assert await lines.readline(100) == b"NOOP\r\n"
        assert await lines.readline(100) is None


async def test_empty_body_oversize_and_eof() -> None:
    """An immediate '.' is an empty body; too much data is oversize; EOF mid-DATA gives None."""
    assert await BufferedLines(reader_with(b".\r\n")).read_dot_terminated(10) == (b"", False)
    assert await BufferedLines(reader_with(b"x" * 50 + b"\r\n.\r\n")).read_dot_terminated(10) == (b"", True)
    big = b"y" * 300_000 + b"\r\n.\r\n"
    assert await BufferedLines(reader_with(big)).read_dot_terminated(1000) == (b"", True)
    assert (await BufferedLines(reader_with(b"abc\r\n")).read_dot_terminated(10))[0] is None


async def test_on_bytes_can_stop_reading() -> None:
    """The on_bytes callback stops the read once it returns False (drop mid-DATA)."""
    lines = BufferedLines(reader_with(b"a" * 100 + b"\r\n.\r\n"))
    assert await lines.read_dot_terminated(1000, lambda n: n < 50) == (None, False)


async def test_readline_too_long_is_skipped() -> None:
    """A line over the limit raises LineTooLong and the next line is read normally."""
    lines = BufferedLines(reader_with(b"A" * 200 + b"\r\nQUIT\r\n"))
    with pytest.raises(LineTooLong):
        await lines.readline(100)
    assert await lines.readline(100) == b"QUIT\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b".", b"..", b"a", b"\r\n", b"b.c", b"\n"]), max_size=40),
       st.integers(min_value=1, max_value=9))
def test_chunked_stuffing_equals_whole(parts: list[bytes], chunk: int) -> None:
    """Byte-stuffing chunk by chunk gives the same bytes as stuffing the whole message at once."""
    data = b"".join(parts)
    whole = stuff_chunk(data, True)
    pieces = [stuff_chunk(data[i:i + chunk], i == 0 or data[i - 1] == 0x0A)
              for i in range(0, len(data), chunk)]
    assert b"".join(pieces) == whole


def test_top_of_headers_and_lines() -> None:
    """TOP returns headers, the blank line and the first n body lines."""
    msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
    assert top_of(msg, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert top_of(msg, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert top_of(msg, 99) == msg


def test_pkce_rfc7636_vector() -> None:
    """The S256 challenge matches RFC 7636 Appendix B."""
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(("uri", "ok"), [
    ("http://127.0.0.1:5000/cb", True), ("http://localhost/", True), ("https://127.0.0.1/cb", False),
    ("http://evil.example/cb", False), ("http://127.0.0.1.evil.example/", False),
])
def test_loopback_redirects_match_any_port(uri: str, ok: bool) -> None:
    """Loopback redirect URIs match a path-less registration on any port; others do not."""
    assert redirect_uri_matches(("http://127.0.0.1", "http://localhost"), uri) is ok


def test_registered_path_must_match() -> None:
    """A registration with a path accepts that path on any loopback port, and no other path."""
    assert redirect_uri_matches(("http://127.0.0.1/cb",), "http://127.0.0.1:4444/cb")
    assert not redirect_uri_matches(("http://127.0.0.1/cb",), "http://127.0.0.1:4444/other")


def test_jwt_verify_rejects_bad_claims() -> None:
    """A valid RS256 JWT verifies; wrong aud, too long lifetime or unknown iss are rejected."""
    private, public = generate_rsa_key_pem()
    keys = {"sa@x": public}
    good = sign_service_account_jwt(private, iss="sa@x", sub="m@x", scope="mail", aud=AUD, now=NOW)
    assert verify_service_account_jwt(good, keys, {AUD}, NOW)["sub"] == "m@x"
    for bad in (
        sign_service_account_jwt(private, iss="sa@x", sub="m@x", scope="mail", aud="other", now=NOW),
        sign_service_account_jwt(private, iss="sa@x", sub="m@x", scope="mail", aud=AUD, now=NOW,
                                 lifetime_s=7200),
        sign_service_account_jwt(private, iss="nobody@x", sub="m@x", scope="mail", aud=AUD, now=NOW),
        sign_service_account_jwt(private, iss="sa@x", sub="m@x", scope="mail", aud=AUD, now=NOW - 7200),
    ):
        with pytest.raises(JwtRejected):
            verify_service_account_jwt(bad, keys, {AUD}, NOW)

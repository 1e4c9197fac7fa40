"""Unit-level fuzzing of the POP3 state machine, POP3 reply parsing and the SASL helpers.

Example counts and the per-example deadline come from the hypothesis profile (tests/conftest.py);
@example pins inputs that once broke a parser, so every run tries them.
"""

from __future__ import annotations

import base64

from hypothesis import example, given
from hypothesis import strategies as st

from relay.errors import ProtocolInputError, UpstreamProtocolError
from relay.pop3.protocol import (
    MAX_COMMAND_OCTETS,
    NEED_DATA,
    PAUSED,
    LoginAttempt,
    Pop3Protocol,
    Reply,
    StartTls,
    State,
    UpstreamCommand,
)
from relay.pop3.replies import MultilineEndScanner, parse_status
from relay.sasl import (
    FORBIDDEN_CHARS,
    decode_login_field,
    decode_oauthbearer,
    decode_plain,
    decode_xoauth2,
    encode_plain,
    encode_xoauth2,
    xoauth2_raw,
)

_pop_piece = st.sampled_from([
    b"USER a", b"USER ", b"PASS p", b"PASS ", b"AUTH", b"AUTH PLAIN", b" AGFAAHA=", b" =", b"*", b"STLS",
    b"CAPA", b"QUIT", b"STAT", b"LIST", b"LIST 1", b"RETR 1", b"RETR x", b"DELE 99999999999", b"TOP 1 2",
    b"UIDL", b"NOOP", b"RSET", b"APOP a b", b"\r\n", b"\n", b"\r", b"\x00", b"\x01", b"\xff\xfe", b" ",
    b"x" * 300, b"\xc3\xa9", b"AGFAAGI=",
])
_pop_stream = st.lists(_pop_piece, max_size=25).map(b"".join)


@given(_pop_stream, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=6),
       st.booleans(), st.booleans(), st.randoms(use_true_random=False))
def test_pop3_protocol_survives_any_command_stream(data: bytes, sizes: list[int], stls: bool,
                                                   plaintext: bool, rnd) -> None:
    """Any byte stream, in any chunks, with random login decisions: only documented events, the
    forwarded commands are canonical lines under 255 octets, and no exception."""
    proto = Pop3Protocol(stls_available=stls, tls_active=False, plaintext_allowed=plaintext)
    pos, i, steps = 0, 0, 0
    while steps < 500:
        steps += 1
        event = proto.next_event()
        if event is NEED_DATA:
            if pos >= len(data):
                break
            size = sizes[i % len(sizes)]
            i += 1
            proto.receive_data(data[pos:pos + size])
            pos += size
            continue
        assert event is not PAUSED, "paused without a pending decision"
        if isinstance(event, Reply):
            assert event.data.endswith(b"\r\n") and event.data[:1] in (b"+", b"-")
            if event.close:
                assert proto.state is State.CLOSED
        elif isinstance(event, LoginAttempt):
            assert not any(ch in FORBIDDEN_CHARS for ch in event.username + event.password.reveal())
            if rnd.random() < 0.5:
                proto.login_succeeded()
            else:
                proto.login_failed()
        elif isinstance(event, StartTls):
            assert stls
            proto.tls_started(plaintext_allowed=True)
        elif isinstance(event, UpstreamCommand):
            assert proto.state in (State.TRANSACTION, State.CLOSED)
            assert event.line.endswith(b"\r\n") and len(event.line) <= MAX_COMMAND_OCTETS
            assert b"\r" not in event.line[:-2] and b"\n" not in event.line[:-2]
            assert event.line.split(b" ")[0].rstrip(b"\r\n") == event.keyword.encode()
        else:  # pragma: no cover - a new event type would need a test
            raise AssertionError(f"unexpected event {event!r}")


@given(st.binary(max_size=120), st.lists(st.binary(max_size=40), max_size=6))
def test_pop3_reply_parsing_raises_only_protocol_errors(status: bytes, chunks: list[bytes]) -> None:
    """parse_status and the multi-line end scanner: a value or UpstreamProtocolError, never other."""
    try:
        parsed = parse_status(status)
    except UpstreamProtocolError:
        parsed = None
    assert parsed is None or status.startswith((b"+OK", b"-ERR"))
    scanner = MultilineEndScanner()
    seen = b""
    for chunk in chunks:
        part, rest = scanner.feed(chunk)
        seen += part
        if rest is not None:
            assert seen.endswith(b".\r\n")
            break


_sasl_text = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["", "=", "*", "AGFAAGI=", "dXNlcj1hAWF1dGg9QmVhcmVyIHQBAQ==",
                     "bixhPWEsAWF1dGg9QmVhcmVyIHgBAQ=="]),
)


@given(_sasl_text)
@example(base64.b64encode(b"\x00user\r\n\x00pass").decode())  # CR/LF smuggled into a login
@example(base64.b64encode(b"user=a\x01auth=Bearer t\x01\x01").decode())
def test_sasl_decoders_raise_only_protocol_input_errors(text: str) -> None:
    """PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER decoders: a value or ProtocolInputError, and what they
    return never holds CR, LF, NUL or ^A in a login."""
    for decode in (decode_plain, lambda t: decode_login_field(t, "username"), decode_xoauth2,
                   decode_oauthbearer):
        try:
            value = decode(text)
        except ProtocolInputError:
            continue
        if decode is decode_plain:
            assert not any(ch in FORBIDDEN_CHARS for ch in value.username + value.password)
        elif isinstance(value, str):
            assert not any(ch in FORBIDDEN_CHARS for ch in value)


@given(st.text(max_size=30), st.text(max_size=60))
def test_xoauth2_builder_refuses_injection_and_round_trips(user: str, token: str) -> None:
    """The XOAUTH2 builder refuses CR/LF/NUL/^A; otherwise it decodes back to exactly its input."""
    try:
        raw = xoauth2_raw(user, token)
    except ProtocolInputError:
        assert any(ch in FORBIDDEN_CHARS for ch in user + token)
        return
    assert raw.count(b"\x01") == 3
    if user and token:
        creds = decode_xoauth2(encode_xoauth2(user, token))
        assert (creds.user, creds.token) == (user, token)
        plain = decode_plain(encode_plain(user, token))
        assert (plain.username, plain.password) == (user, token)

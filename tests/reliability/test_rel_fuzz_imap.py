"""Unit-level fuzzing of the pre-login IMAP state machine and the upstream reply parsers.

Example counts and the per-example deadline come from the hypothesis profile (tests/conftest.py);
@example pins inputs that once broke a parser, so every run tries them.
"""

from __future__ import annotations

import contextlib
import re

from hypothesis import given
from hypothesis import strategies as st

from relay.errors import UpstreamProtocolError
from relay.imap.protocol import (
    NEED_DATA,
    PAUSED,
    ImapProtocol,
    LoginAttempt,
    Reply,
    StartTls,
    State,
)
from relay.imap.syntax import ImapSyntaxError, is_valid_tag, tokenize
from relay.imap.upstream import capabilities_in, client_capabilities, parse_tagged
from relay.sasl import FORBIDDEN_CHARS

_piece = st.sampled_from([
    b"a1 ", b"* ", b"+ ", b"LOGIN ", b"login ", b"AUTHENTICATE PLAIN", b" AGFAAHA=", b" =", b"*",
    b"STARTTLS", b"CAPABILITY", b"NOOP", b"LOGOUT", b"ID NIL", b'ID ("a" "b")', b"SELECT INBOX",
    b"APPEND INBOX ", b"{5}", b"{5+}", b"{0}", b"{9999999999}", b"{9999999999+}", b"{70000+}",
    b'"quoted \\" str"', b'"open', b"(", b")", b"alice", b"\r\n", b"\n", b"\r", b"\x00", b"\x01",
    b"\xff\xfe", b" ", b"x" * 3000, b"y" * 9000, b"\xc3\xa9", b"AGFAAGI=", b"\\", b"%", b"]",
])
_stream = st.lists(_piece, max_size=30).map(b"".join)
_REPLY = re.compile(rb"^(\+ .*|\* (OK|BAD|BYE|CAPABILITY|ID) .*|[^ \r\n]+ (OK|NO|BAD) .*)$")


def _check_reply(data: bytes) -> None:
    assert data.endswith(b"\r\n")
    for line in data[:-2].split(b"\r\n"):
        assert _REPLY.match(line), line


@given(_stream, st.lists(st.integers(min_value=1, max_value=4096), min_size=1, max_size=6),
       st.booleans(), st.booleans(), st.randoms(use_true_random=False))
def test_imap_protocol_survives_any_byte_stream(data: bytes, sizes: list[int], starttls: bool,
                                                plaintext: bool, rnd) -> None:
    """Any bytes, in any chunks, with random login decisions: only well-formed replies, logins
    without control characters, bounded buffering, and no exception."""
    proto = ImapProtocol(starttls_available=starttls, tls_active=False, plaintext_allowed=plaintext)
    pos, i, steps = 0, 0, 0
    while steps < 2000:  # events, not reads: each one must consume input
        event = proto.next_event()
        if event is not NEED_DATA:
            steps += 1
        if event is NEED_DATA:
            if pos >= len(data) or proto.state is not State.NOT_AUTHENTICATED:
                break
            size = sizes[i % len(sizes)]
            i += 1
            proto.receive_data(data[pos:pos + size])
            pos += size
            assert len(proto._buf) <= 16 * 1024 + 5 * 4096  # bounded while a command is incomplete
            continue
        assert event is not PAUSED, "paused without a pending decision"
        if isinstance(event, Reply):
            _check_reply(event.data)
            if event.close:
                assert proto.state is State.CLOSED
                break
        elif isinstance(event, LoginAttempt):
            assert plaintext and is_valid_tag(event.tag)
            assert not any(ch in FORBIDDEN_CHARS for ch in event.username + event.password.reveal())
            if rnd.random() < 0.5:
                proto.login_succeeded()
                proto.take_buffered()
            else:
                proto.login_failed()
        elif isinstance(event, StartTls):
            assert starttls
            proto.tls_started(plaintext_allowed=True)
    assert steps < 2000, "the protocol looped without consuming input"


@given(st.binary(max_size=300))
def test_tokenize_raises_only_syntax_errors(data: bytes) -> None:
    """The tokenizer either returns tokens or raises ImapSyntaxError."""
    with contextlib.suppress(ImapSyntaxError):
        tokenize(data)


@given(st.binary(max_size=300), st.sampled_from([b"xr1", b"a", b"*"]))
def test_upstream_reply_parsers_never_crash(line: bytes, tag: bytes) -> None:
    """Upstream lines parse or raise UpstreamProtocolError; capability filtering never fails."""
    with contextlib.suppress(UpstreamProtocolError):
        parse_tagged(line, tag)
    caps = capabilities_in(line)
    if caps is not None:
        kept = client_capabilities(caps)
        assert "AUTH=" not in kept.upper() and "\r" not in kept and "\n" not in kept

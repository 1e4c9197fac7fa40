"""Transcript tests for the pure POP3 state machine, replayed at every byte split."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pop3.protocol import (
    NEED_DATA,
    PAUSED,
    LoginAttempt,
    Pop3Protocol,
    Reply,
    StartTls,
    State,
    UpstreamCommand,
)

GOOD = ("alice", "s3cret pass")
Transcript = list[tuple[bytes, bytes]]


def drive(chunks: list[bytes], *, stls: bool = False, tls: bool = False, plaintext: bool = True,
          upstream_caps: list[str] | None = None) -> bytes:
    """Feed ``chunks`` to a protocol with a fake policy/upstream; return everything sent back.

    Forwarded commands appear as ``>LINE`` (``>LINE [multi]`` when a +OK would be multi-line).
    """
    proto = Pop3Protocol(stls_available=stls, tls_active=tls, plaintext_allowed=plaintext)
    out = bytearray()
    for chunk in chunks:
        proto.receive_data(chunk)
        while True:
            event = proto.next_event()
            if event is NEED_DATA:
                break
            assert event is not PAUSED
            if isinstance(event, Reply):
                out += event.data
                if event.close:
                    return bytes(out)
            elif isinstance(event, LoginAttempt):
                if (event.username, event.password.reveal()) == GOOD:
                    proto.set_upstream_capabilities(upstream_caps)
                    proto.login_succeeded()
                    out += b"+OK Logged in\r\n"
                else:
                    proto.login_failed()
                    out += b"-ERR [AUTH] Invalid credentials\r\n"
            elif isinstance(event, StartTls):
                out += event.reply
                proto.tls_started(plaintext_allowed=True)
            elif isinstance(event, UpstreamCommand):
                out += b">" + event.line[:-2] + (b" [multi]" if event.multiline else b"") + b"\r\n"
                if event.quit:
                    return bytes(out)
    return bytes(out)


def replay_all_splits(transcript: Transcript, **kwargs: object) -> None:
    """Assert the transcript holds for the whole input, every two-way split, and byte by byte."""
    data = b"".join(line for line, _ in transcript)
    expected = b"".join(reply for _, reply in transcript)
    assert drive([data], **kwargs) == expected  # type: ignore[arg-type]
    for i in range(1, len(data)):
        assert drive([data[:i], data[i:]], **kwargs) == expected, f"split at {i}"  # type: ignore[arg-type]
    assert drive([bytes([b]) for b in data], **kwargs) == expected  # type: ignore[arg-type]


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


LOGIN: Transcript = [(b"USER alice\r\n", b"+OK Send your password\r\n"),
                     (b"PASS s3cret pass\r\n", b"+OK Logged in\r\n")]
CAPA_PLAIN = (b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
              b"PIPELINING\r\nUSER\r\nSASL PLAIN\r\n")
IMPL = b"IMPLEMENTATION xoauth2-relay\r\n.\r\n"


def test_full_session_forwards_canonical_commands_with_multiline_flags() -> None:
    """USER/PASS logs in; every TRANSACTION command is forwarded, multi-line ones flagged."""
    replay_all_splits([
        *LOGIN,
        (b"STAT\r\n", b">STAT\r\n"),
        (b"list\r\n", b">LIST [multi]\r\n"),
        (b"LIST 1\r\n", b">LIST 1\r\n"),
        (b"UIDL\r\n", b">UIDL [multi]\r\n"),
        (b"uidl 2\r\n", b">UIDL 2\r\n"),
        (b"TOP 1  10\r\n", b">TOP 1 10 [multi]\r\n"),
        (b"RETR 1\r\n", b">RETR 1 [multi]\r\n"),
        (b"DELE 1\r\n", b">DELE 1\r\n"),
        (b"NOOP\r\n", b">NOOP\r\n"),
        (b"RSET\r\n", b">RSET\r\n"),
        (b"QUIT\r\n", b">QUIT\r\n"),
    ])


def test_bare_lf_line_ends_are_tolerated() -> None:
    """Commands ended by a bare LF work like CRLF ones."""
    replay_all_splits([(b"USER alice\n", b"+OK Send your password\r\n"),
                       (b"PASS s3cret pass\n", b"+OK Logged in\r\n"), (b"STAT\n", b">STAT\r\n")])


def test_capa_lists_user_sasl_and_stls_before_tls() -> None:
    """CAPA in AUTHORIZATION advertises USER, SASL PLAIN and STLS (when configured)."""
    replay_all_splits([(b"CAPA\r\n", CAPA_PLAIN + b"STLS\r\n" + IMPL)], stls=True)


def test_no_plaintext_login_without_tls_where_policy_forbids() -> None:
    """Without TLS where plaintext is not allowed: no USER/SASL in CAPA, USER/PASS/AUTH refused."""
    refusal = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections: "
               b"TLS required (use STLS or the TLS port)\r\n")
    replay_all_splits([
        (b"CAPA\r\n", b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n"
                      b"AUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\n" + IMPL),
        (b"USER alice\r\n", refusal),
        (b"PASS s3cret pass\r\n", refusal),
        (b"AUTH PLAIN " + plain(*GOOD) + b"\r\n", refusal),
        (b"AUTH\r\n", b"+OK Supported mechanisms follow\r\n.\r\n"),
    ], stls=True, plaintext=False)


def test_stls_upgrades_then_hides_stls_and_allows_login() -> None:
    """STLS answers +OK, and after the handshake CAPA drops STLS and login works."""
    proto = Pop3Protocol(stls_available=True, tls_active=False, plaintext_allowed=False)
    proto.receive_data(b"STLS\r\nUSER injected\r\n")
    event = proto.next_event()
    assert isinstance(event, StartTls) and event.reply == b"+OK Begin TLS negotiation now\r\n"
    assert proto.next_event() is PAUSED
    proto.tls_started(plaintext_allowed=True)
    assert proto.next_event() is NEED_DATA  # the pipelined clear-text USER was discarded
    proto.receive_data(b"CAPA\r\n")
    capa = proto.next_event()
    assert isinstance(capa, Reply) and b"STLS" not in capa.data and b"USER\r\n" in capa.data
    proto.receive_data(b"PASS x\r\n")
    assert proto.next_event() == Reply(b"-ERR Send USER before PASS\r\n")


def test_stls_refused_when_unavailable_or_already_tls() -> None:
    """STLS is refused when the listener has no STLS, when TLS is active, or with arguments."""
    replay_all_splits([(b"STLS\r\n", b"-ERR STLS is not available on this listener\r\n")])
    replay_all_splits([(b"STLS\r\n", b"-ERR TLS is already active\r\n"),
                       (b"STLS now\r\n", b"-ERR STLS takes no arguments\r\n")], stls=True, tls=True)


def test_pass_before_user_and_wrong_password_then_right() -> None:
    """PASS without USER is refused; a wrong password fails and a retry can succeed."""
    replay_all_splits([
        (b"PASS s3cret pass\r\n", b"-ERR Send USER before PASS\r\n"),
        (b"USER alice\r\n", b"+OK Send your password\r\n"),
        (b"PASS wrong\r\n", b"-ERR [AUTH] Invalid credentials\r\n"),
        (b"PASS s3cret pass\r\n", b"-ERR Send USER before PASS\r\n"),
        *LOGIN,
    ])


def test_wrong_state_and_unknown_commands_do_not_desynchronise() -> None:
    """Commands in the wrong state, unknown, empty or non-UTF-8 lines get one -ERR each."""
    replay_all_splits([
        (b"STAT\r\n", b"-ERR STAT is not allowed before login\r\n"),
        (b"RETR 1\r\n", b"-ERR RETR is not allowed before login\r\n"),
        (b"FOO bar\r\n", b"-ERR Unknown command\r\n"),
        (b"\r\n", b"-ERR Unknown command\r\n"),
        (b"\xff\xfe\x80junk\r\n", b"-ERR Command is not valid UTF-8\r\n"),
        (b"APOP alice abc\r\n", b"-ERR APOP is not supported; use USER/PASS or AUTH PLAIN\r\n"),
        *LOGIN,
        (b"USER bob\r\n", b"-ERR USER is not allowed after login\r\n"),
        (b"AUTH PLAIN\r\n", b"-ERR AUTH is not allowed after login\r\n"),
        (b"STLS\r\n", b"-ERR STLS is not allowed after login\r\n"),
        (b"XYZZY\r\n", b"-ERR Unknown command\r\n"),
        (b"NOOP\r\n", b">NOOP\r\n"),
    ])


@pytest.mark.parametrize("line", [b"RETR\r\n", b"RETR abc\r\n", b"TOP 1\r\n", b"LIST 1 2\r\n",
                                  b"STAT 1\r\n", b"DELE -1\r\n", b"RETR 12345678901\r\n",
                                  b"RETR \xd9\xa3\r\n"])
def test_bad_transaction_arguments_are_refused_locally(line: bytes) -> None:
    """Malformed arguments are answered by the relay and never forwarded upstream."""
    keyword = line.split()[0].decode()
    replay_all_splits([*LOGIN, (line, f"-ERR Syntax error in {keyword} arguments\r\n".encode()),
                       (b"NOOP\r\n", b">NOOP\r\n")])


def test_overlong_lines_get_one_error_and_resync_at_line_end() -> None:
    """A line over 255 octets gets one -ERR; the next line is parsed normally; 255 is allowed."""
    exact = b"USER " + b"a" * 248 + b"\r\n"
    one_more = b"USER " + b"a" * 249 + b"\r\n"
    assert len(exact) == 255 and len(one_more) == 256
    replay_all_splits([
        (one_more, b"-ERR Line too long\r\n"),
        (b"X" * 300 + b"\r\n", b"-ERR Line too long\r\n"),
        (b"NOOP" + b" " * 252 + b"\r\n", b"-ERR Line too long\r\n"),
        (exact, b"+OK Send your password\r\n"),
        (b"Y" * 1000 + b"\n", b"-ERR Line too long\r\n"),
        *LOGIN,
        (b"RETR " + b"1" * 400 + b"\r\n", b"-ERR Line too long\r\n"),
        (b"STAT\r\n", b">STAT\r\n"),
    ])


def test_auth_plain_initial_response_and_continuation() -> None:
    """AUTH PLAIN logs in with an initial response or after a `+ ` continuation."""
    replay_all_splits([(b"AUTH PLAIN " + plain(*GOOD) + b"\r\n", b"+OK Logged in\r\n")])
    replay_all_splits([(b"auth plain\r\n", b"+ \r\n"), (plain(*GOOD) + b"\r\n", b"+OK Logged in\r\n"),
                       (b"LIST\r\n", b">LIST [multi]\r\n")])


def test_auth_plain_cancel_bad_base64_and_bad_mechanism() -> None:
    """`*` cancels; invalid base64, wrong shapes and unknown mechanisms get -ERR and no login."""
    replay_all_splits([
        (b"AUTH PLAIN\r\n", b"+ \r\n"),
        (b"*\r\n", b"-ERR Authentication cancelled\r\n"),
        (b"AUTH PLAIN\r\n", b"+ \r\n"),
        (b"!!not base64!!\r\n", b"-ERR AUTH PLAIN response is not valid base64\r\n"),
        (b"AUTH PLAIN @@@\r\n", b"-ERR AUTH PLAIN response is not valid base64\r\n"),
        (b"AUTH PLAIN =\r\n",
         b"-ERR AUTH PLAIN response must be authzid NUL username NUL password\r\n"),
        (b"AUTH PLAIN " + base64.b64encode(b"only-one-part") + b"\r\n",
         b"-ERR AUTH PLAIN response must be authzid NUL username NUL password\r\n"),
        (b"AUTH PLAIN a b\r\n", b"-ERR Syntax: AUTH PLAIN [initial-response]\r\n"),
        (b"AUTH XOAUTH2\r\n", b"-ERR Unsupported authentication mechanism; use PLAIN\r\n"),
        (b"AUTH\r\n", b"+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n"),
        (b"AUTH PLAIN " + plain("alice", "s3cret pass", "bob") + b"\r\n",
         b"-ERR [AUTH] Authorization identity must be empty or equal the user name\r\n"),
        (b"AUTH PLAIN " + plain(*GOOD, "alice") + b"\r\n", b"+OK Logged in\r\n"),
    ])


@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "\x01"])
def test_control_characters_in_credentials_are_refused(bad: str) -> None:
    """CR, LF, NUL or ^A in a user name or password never reaches the authenticator."""
    forbidden = b"contains a forbidden control character (CR, LF, NUL or ^A)\r\n"
    shape = b"-ERR AUTH PLAIN response must be authzid NUL username NUL password\r\n"
    transcript: Transcript = [
        (b"AUTH PLAIN " + plain("alice", "s3cret" + bad) + b"\r\n",
         shape if bad == "\x00" else b"-ERR password " + forbidden),
        (b"AUTH PLAIN " + plain("al" + bad + "ice", "x") + b"\r\n",
         shape if bad == "\x00" else b"-ERR username " + forbidden),
    ]
    if bad != "\n":  # a raw LF ends the line, so it cannot sit inside USER/PASS
        raw = bad.encode()
        transcript += [
            (b"USER al" + raw + b"ice\r\n", b"-ERR user name " + forbidden),
            (b"USER alice\r\n", b"+OK Send your password\r\n"),
            (b"PASS s3" + raw + b"cret\r\n", b"-ERR password " + forbidden),
        ]
    replay_all_splits(transcript)


def test_quit_in_authorization_closes_without_login() -> None:
    """QUIT before login answers +OK, closes, and ignores anything after it."""
    replay_all_splits([(b"QUIT\r\n", b"+OK Logging out\r\n"), (b"USER alice\r\n", b"")])


def test_capa_after_login_follows_upstream_capabilities() -> None:
    """CAPA in TRANSACTION offers TOP/UIDL only if the upstream does, and passes EXPIRE on."""
    replay_all_splits([*LOGIN, (b"CAPA\r\n", b"+OK Capability list follows\r\nUIDL\r\nRESP-CODES\r\n"
                                             b"PIPELINING\r\nEXPIRE 30\r\n" + IMPL)],
                      upstream_caps=["UIDL", "USER", "EXPIRE 30", "SASL XOAUTH2"])


def test_login_pauses_until_decided() -> None:
    """After a LoginAttempt the protocol reports PAUSED (no pipelined command slips past it)."""
    proto = Pop3Protocol(stls_available=False, tls_active=False, plaintext_allowed=True)
    proto.receive_data(b"USER alice\r\nPASS pw\r\nSTAT\r\n")
    assert proto.next_event() == Reply(b"+OK Send your password\r\n")
    attempt = proto.next_event()
    assert isinstance(attempt, LoginAttempt) and attempt.mechanism == "USER"
    assert repr(attempt.password) == "Secret('***')"
    assert proto.next_event() is PAUSED
    proto.login_succeeded()
    assert proto.state is State.TRANSACTION
    assert proto.next_event() == UpstreamCommand("STAT", b"STAT\r\n", multiline=False)
    with pytest.raises(RuntimeError):
        proto.login_succeeded()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=8))
def test_arbitrary_bytes_never_crash_and_only_yield_known_events(chunks: list[bytes]) -> None:
    """Random input never raises; replies are CRLF-terminated and forwards are single lines."""
    proto = Pop3Protocol(stls_available=True, tls_active=False, plaintext_allowed=True)
    for chunk in [*chunks, b"\r\n"]:
        proto.receive_data(chunk)
        while (event := proto.next_event()) is not NEED_DATA:
            if isinstance(event, Reply):
                assert event.data.endswith(b"\r\n")
            elif isinstance(event, LoginAttempt):
                proto.login_succeeded()
            elif isinstance(event, StartTls):
                proto.tls_started(plaintext_allowed=True)
            elif isinstance(event, UpstreamCommand):
                assert event.line.count(b"\n") == 1 and b"\r" not in event.line[:-2]
            else:
                pytest.fail(f"unexpected event {event!r}")

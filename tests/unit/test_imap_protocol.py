"""Transcript tests for the pure pre-login IMAP state machine, replayed at every byte split."""

from __future__ import annotations

import base64

import pytest

from relay.imap.protocol import (
    MAX_LINE_OCTETS,
    NEED_DATA,
    PAUSED,
    ImapProtocol,
    LoginAttempt,
    Reply,
    StartTls,
    State,
)

GOOD = ("alice", "s3cret pass")
Transcript = list[tuple[bytes, bytes]]
CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE AUTH=PLAIN"


def drive(chunks: list[bytes], *, starttls: bool = False, tls: bool = False,
          plaintext: bool = True) -> bytes:
    """Feed ``chunks`` to a protocol with a fake login policy; return everything sent back.

    A successful login answers ``TAG OK Logged in`` and then shows the bytes the client had
    pipelined behind it as ``>relay:...`` (what the session forwards upstream first).
    """
    proto = ImapProtocol(starttls_available=starttls, tls_active=tls, plaintext_allowed=plaintext)
    out = bytearray()
    relayed = bytearray()
    for chunk in chunks:
        if proto.state is State.AUTHENTICATED:  # the session relays later bytes itself
            relayed += chunk
            continue
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
                    proto.login_succeeded()
                    out += event.tag + b" OK Logged in\r\n"
                else:
                    proto.login_failed()
                    out += event.tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
            elif isinstance(event, StartTls):
                out += event.reply
                proto.tls_started(plaintext_allowed=True)
        if proto.state is State.AUTHENTICATED:
            relayed += proto.take_buffered()
    return bytes(out) + (b">relay:" + relayed if relayed else b"")


def replay_all_splits(transcript: Transcript, **kwargs: bool) -> None:
    """Assert the transcript holds for the whole input, every two-way split, and byte by byte."""
    data = b"".join(line for line, _ in transcript)
    expected = b"".join(reply for _, reply in transcript)
    assert drive([data], **kwargs) == expected
    for i in range(1, len(data)):
        assert drive([data[:i], data[i:]], **kwargs) == expected, f"split at {i}"
    assert drive([bytes([b]) for b in data], **kwargs) == expected


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def test_greeting_lists_the_relays_own_capabilities():
    """The greeting carries the relay's capabilities; LOGINDISABLED replaces AUTH=PLAIN when needed."""
    proto = ImapProtocol(starttls_available=True, tls_active=False, plaintext_allowed=False)
    assert proto.greeting() == (b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE STARTTLS "
                                b"LOGINDISABLED] IMAP relay ready\r\n")


def test_capability_noop_and_logout():
    """CAPABILITY, NOOP and LOGOUT get their untagged data and tagged OK with the client's tag."""
    replay_all_splits([
        (b"a1 CAPABILITY\r\n", b"* CAPABILITY " + CAPS + b"\r\na1 OK CAPABILITY completed\r\n"),
        (b"a2 noop\r\n", b"a2 OK NOOP completed\r\n"),
        (b"a3 LOGOUT\r\n", b"* BYE Logging out\r\na3 OK LOGOUT completed\r\n"),
    ])


def test_login_with_atoms_then_relay_gets_pipelined_bytes():
    """LOGIN with an atom and a quoted string; bytes pipelined behind it go to the relay untouched."""
    replay_all_splits([
        (b'a1 LOGIN alice "s3cret pass"\r\n', b"a1 OK Logged in\r\n"),
        (b"a2 SELECT INBOX\r\n", b">relay:a2 SELECT INBOX\r\n"),
    ])


def test_login_with_quoted_escapes_and_wrong_password():
    """Quoted strings unescape \\\\ and \\"; a refused login stays before login and can be retried."""
    replay_all_splits([
        (b'x LOGIN "alice" "a\\"b\\\\c"\r\n', b"x NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
        (b'y LOGIN alice "s3cret pass"\r\n', b"y OK Logged in\r\n"),
    ])


def test_login_with_synchronising_literals():
    """``{n}`` literals get a ``+`` continuation each and carry any bytes, spaces included."""
    replay_all_splits([
        (b"a1 LOGIN {5}\r\n", b"+ Ready for literal data\r\n"),
        (b"alice {11}\r\n", b"+ Ready for literal data\r\n"),
        (b"s3cret pass\r\n", b"a1 OK Logged in\r\n"),
    ])


def test_login_with_non_synchronising_literals():
    """``{n+}`` literals (LITERAL+) are read without a continuation."""
    replay_all_splits([(b"a1 LOGIN {5+}\r\nalice {11+}\r\ns3cret pass\r\n", b"a1 OK Logged in\r\n")])


def test_authenticate_plain_with_and_without_initial_response():
    """AUTHENTICATE PLAIN: SASL-IR on the command line, or after an empty ``+`` continuation."""
    replay_all_splits([
        (b"a1 AUTHENTICATE PLAIN " + plain("alice", "wrong") + b"\r\n",
         b"a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
        (b"a2 AUTHENTICATE plain\r\n", b"+ \r\n"),
        (plain("alice", "s3cret pass") + b"\r\n", b"a2 OK Logged in\r\n"),
    ])


def test_authenticate_cancel_and_bad_base64():
    """``*`` cancels with a tagged BAD; invalid base64 is a tagged BAD; the session goes on."""
    replay_all_splits([
        (b"a1 AUTHENTICATE PLAIN\r\n", b"+ \r\n"),
        (b"*\r\n", b"a1 BAD Authentication cancelled\r\n"),
        (b"a2 AUTHENTICATE PLAIN\r\n", b"+ \r\n"),
        (b"!!!\r\n", b"a2 BAD AUTH PLAIN response is not valid base64\r\n"),
        (b"a3 AUTHENTICATE PLAIN " + plain("alice", "s3cret pass", "bob") + b"\r\n",
         b"a3 NO [AUTHORIZATIONFAILED] Authorization identity must be empty or equal the user name\r\n"),
        (b"a4 AUTHENTICATE XOAUTH2 abc\r\n",
         b"a4 NO [CANNOT] Unsupported authentication mechanism; use PLAIN\r\n"),
        (b"a5 NOOP\r\n", b"a5 OK NOOP completed\r\n"),
    ])


def test_plaintext_refused_without_tls():
    """Where plaintext logins are refused, LOGIN and AUTHENTICATE PLAIN get NO [PRIVACYREQUIRED]."""
    caps = b"IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE STARTTLS LOGINDISABLED"
    replay_all_splits([
        (b"a0 CAPABILITY\r\n", b"* CAPABILITY " + caps + b"\r\na0 OK CAPABILITY completed\r\n"),
        (b'a1 LOGIN alice "s3cret pass"\r\n', b"a1 NO [PRIVACYREQUIRED] Plaintext login disallowed "
         b"on non-secure connections: use STARTTLS or the TLS port\r\n"),
        (b"a2 AUTHENTICATE PLAIN\r\n", b"a2 NO [PRIVACYREQUIRED] Plaintext authentication "
         b"disallowed on non-secure connections: use STARTTLS or the TLS port\r\n"),
    ], starttls=True, plaintext=False)


def test_starttls_drops_pipelined_cleartext_then_login_works():
    """STARTTLS: bytes pipelined behind it are discarded (no command injection), then a login works."""
    proto = ImapProtocol(starttls_available=True, tls_active=False, plaintext_allowed=False)
    proto.receive_data(b"a1 STARTTLS\r\na2 LOGIN alice x\r\n")
    event = proto.next_event()
    assert event == StartTls(b"a1 OK Begin TLS negotiation now\r\n")
    assert proto.next_event() is PAUSED
    proto.tls_started(plaintext_allowed=True)
    assert proto.next_event() is NEED_DATA
    proto.receive_data(b"a3 CAPABILITY\r\n")
    reply = proto.next_event()
    assert isinstance(reply, Reply) and b"STARTTLS" not in reply.data and b"AUTH=PLAIN" in reply.data


def test_starttls_refused_when_active_or_unavailable():
    """STARTTLS under TLS, or on a listener without it, is a tagged BAD."""
    replay_all_splits([(b"t STARTTLS\r\n", b"t BAD TLS is already active\r\n")], starttls=True, tls=True)
    replay_all_splits([(b"t STARTTLS\r\n", b"t BAD STARTTLS is not available on this listener\r\n")])


def test_id_command():
    """ID NIL and ID with a field list answer the relay's name; a malformed ID is BAD."""
    reply = b'* ID ("name" "xoauth2-relay")\r\n'
    replay_all_splits([
        (b"i1 ID NIL\r\n", reply + b"i1 OK ID completed\r\n"),
        (b'i2 ID ("name" "fetchmail" "version" {3}\r\n', b"+ Ready for literal data\r\n"),
        (b'6.4)\r\n', reply + b"i2 OK ID completed\r\n"),
        (b"i3 ID (name)\r\n", b'i3 BAD Syntax: ID NIL or ID ("field" "value" ...)\r\n'),
    ])


def test_bad_commands_get_tagged_or_untagged_bad():
    """Unknown, post-login-only and malformed commands: BAD with the tag when one is readable."""
    replay_all_splits([
        (b"a1 FROBNICATE\r\n", b"a1 BAD Unknown command\r\n"),
        (b"a2 SELECT INBOX\r\n", b"a2 BAD SELECT is not allowed before login\r\n"),
        (b"\r\n", b"* BAD Empty command line\r\n"),
        (b"a+b NOOP\r\n", b"* BAD Invalid or missing tag\r\n"),
        (b"a3\r\n", b"a3 BAD Missing command name\r\n"),
        (b'a4 LOGIN "alice\r\n', b"a4 BAD Unterminated quoted string\r\n"),
        (b"a5 LOGIN alice\r\n", b"a5 BAD Syntax: LOGIN user-name password\r\n"),
        (b"a6 NOOP now\r\n", b"a6 BAD NOOP takes no arguments\r\n"),
        (b"a7 NOOP \x00\r\n", b"a7 BAD NUL is not allowed in a command\r\n"),
        (b"a8 NOOP\r\n", b"a8 OK NOOP completed\r\n"),
    ])


def test_absurd_and_unexpected_literals():
    """A huge or misplaced synchronising literal is refused before the client sends it."""
    replay_all_splits([
        (b"a1 LOGIN {9999999999}\r\n", b"a1 BAD [TOOBIG] Literal too large\r\n"),
        (b"a2 APPEND INBOX {10}\r\n", b"a2 BAD Literal not accepted here\r\n"),
        (b"a3 NOOP\r\n", b"a3 OK NOOP completed\r\n"),
    ])


def test_refused_non_synchronising_literal_is_skipped():
    """A refused ``{n+}`` literal is read and dropped so the next command is understood."""
    replay_all_splits([
        (b"a1 APPEND INBOX {12+}\r\nhello world! (\\Seen)\r\n", b"a1 BAD Literal not accepted here\r\n"),
        (b"a2 NOOP\r\n", b"a2 OK NOOP completed\r\n"),
    ])


def test_absurd_non_synchronising_literal_ends_the_connection():
    """A ``{9999999999+}`` literal cannot be skipped: BYE and close."""
    assert drive([b"a1 LOGIN {9999999999+}\r\nxxxx"]) == \
        b"* BYE [TOOBIG] Literal too large; closing the connection\r\n"


def test_overlong_line_is_answered_once_and_skipped():
    """An overlong line gets one tagged BAD [TOOBIG] and the next command works."""
    long_line = b"a1 LOGIN " + b"x" * (MAX_LINE_OCTETS + 10) + b" y\r\n"
    expected = b"a1 BAD [TOOBIG] Command line too long\r\na2 OK NOOP completed\r\n"
    assert drive([long_line + b"a2 NOOP\r\n"]) == expected
    assert drive([long_line[:5000], long_line[5000:], b"a2 NOOP\r\n"]) == expected
    assert drive([long_line[:-2], b"\r\na2 NOOP\r\n"]) == expected


def test_overlong_sasl_response_keeps_the_authenticate_tag():
    """An overlong AUTHENTICATE response line is a BAD tagged with the AUTHENTICATE command's tag."""
    data = b"s1 AUTHENTICATE PLAIN\r\n" + b"A" * (MAX_LINE_OCTETS + 4) + b"\r\ns2 NOOP\r\n"
    assert drive([data]) == (b"+ \r\ns1 BAD [TOOBIG] Command line too long\r\n"
                             b"s2 OK NOOP completed\r\n")


@pytest.mark.parametrize("name", ["alice\x01", "al\rice"])
def test_control_characters_in_credentials_are_refused(name: str):
    """CR, LF, NUL or ^A in a user name never reach the login check."""
    literal = name.encode()
    data = b"a1 LOGIN {%d+}\r\n%s pw\r\n" % (len(literal), literal)
    assert drive([data]).startswith(b"a1 BAD user name contains a forbidden control character")

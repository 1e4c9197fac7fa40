"""Legacy clients and devices over loopback: bare LF in both modes, AUTH after HELO, the device
quirks of issue 14, replayed device transcripts, POP3 quirks and legacy TLS with openssl s_client."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import time
import warnings

import pytest

from relay.config.model import ListenerConfig
from relay.sasl import encode_plain
from relay.tlsutil import generate_self_signed

from .conftest import MAILBOX, PASSWORD, USERNAME, Raw
from .device_transcripts import TRANSCRIPTS, Transcript

CI = os.environ.get("CI", "").lower() == "true"
PLAIN = encode_plain(USERNAME, PASSWORD)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _listener(**changes: object) -> ListenerConfig:
    return ListenerConfig(True, "127.0.0.1", 0, **changes)  # type: ignore[arg-type]


def _login(raw: Raw, greeting: str = "EHLO c.test") -> None:
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp(greeting).startswith("250")
    assert raw.smtp("AUTH PLAIN " + PLAIN).startswith("235")


def _envelope(raw: Raw) -> None:
    assert raw.smtp("MAIL FROM:<a@x.test>").startswith("250")
    assert raw.smtp("RCPT TO:<b@x.test>").startswith("250")
    assert raw.smtp("DATA").startswith("354")


# --- bare LF --------------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", [b"Subject: x\n\nbody\n.\n", b"Subject: x\n\nbody\n.\r\n"], ids=repr)
def test_bare_lf_message_normalize_gets_250_within_a_second_and_crlf_upstream(rel_relay, sandbox,
                                                                              ending):
    """normalize (the default): the issue's hanging dialogs get 250 at once; upstream holds CRLF."""
    relay = rel_relay()
    raw = Raw(relay.smtp_port)
    _login(raw)
    _envelope(raw)
    started = time.monotonic()
    raw.send(ending)
    reply = raw.smtp_reply()
    assert time.monotonic() - started < 1.0 and reply.startswith("250"), reply
    assert raw.smtp("QUIT").startswith("221")
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert msg.data == b"Subject: x\r\n\r\nbody\r\n"


@pytest.mark.parametrize("ending", [b"Subject: x\n\nbody\n.\n", b"Subject: x\n\nbody\n.\r\n"], ids=repr)
def test_bare_lf_message_reject_gets_521_at_once_and_close(rel_relay, sandbox, ending):
    """reject: 521 5.5.2 within a second, connection closed, nothing delivered."""
    relay = rel_relay(smtp_listener=_listener(bare_lf="reject"))
    raw = Raw(relay.smtp_port)
    _login(raw)
    _envelope(raw)
    started = time.monotonic()
    raw.send(ending)
    reply = raw.smtp_reply()
    assert time.monotonic() - started < 1.0 and reply.startswith("521 5.5.2"), reply
    assert raw.closed_by_peer()
    with relay.smtp() as client:  # the next message arrives alone: nothing of the first did
        client.sendmail("a@x.test", ["b@x.test"], b"Subject: y\r\n\r\nok\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"Subject: y\r\n\r\nok\r\n"]


def test_bare_lf_command_reject_and_normalize(rel_relay):
    """A command ending in a bare LF: answered normally in normalize, 521 and closed in reject."""
    lenient = Raw(rel_relay().smtp_port)
    assert lenient.smtp_reply().startswith("220")
    lenient.send(b"EHLO dev\n")
    assert lenient.smtp_reply().startswith("250")
    strict = Raw(rel_relay(smtp_listener=_listener(bare_lf="reject")).smtp_port)
    assert strict.smtp_reply().startswith("220")
    strict.send(b"EHLO dev\n")
    assert strict.smtp_reply().startswith("521 5.5.2")
    assert strict.closed_by_peer()


def test_bare_lf_auth_response_reject(rel_relay):
    """reject mode also checks AUTH LOGIN continuation lines (read outside aiosmtpd's loop)."""
    raw = Raw(rel_relay(smtp_listener=_listener(bare_lf="reject")).smtp_port)
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("EHLO dev").startswith("250")
    assert raw.smtp("AUTH LOGIN").startswith("334")
    raw.send(_b64(USERNAME).encode() + b"\n")
    assert raw.smtp_reply().startswith("521")
    assert raw.closed_by_peer()


# --- AUTH and command quirks ----------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "plain", "login", "Login"])
def test_helo_then_auth_reaches_235(rel_relay, mechanism):
    """HELO + AUTH PLAIN/LOGIN (any case) is accepted, as old devices send it."""
    raw = Raw(rel_relay().smtp_port)
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("HELO printer").startswith("250")
    if mechanism.upper() == "PLAIN":
        assert raw.smtp(f"AUTH {mechanism} {PLAIN}").startswith("235")
    else:
        assert raw.smtp(f"AUTH {mechanism}") == "334 VXNlcm5hbWU6"
        assert raw.smtp(_b64(USERNAME)) == "334 UGFzc3dvcmQ6"
        assert raw.smtp(_b64(PASSWORD)).startswith("235")
    assert raw.smtp("MAIL FROM:<a@x.test>").startswith("250")


def test_auth_before_any_greeting_still_needs_helo(rel_relay):
    """AUTH after HELO does not mean AUTH without any greeting: 503 as before."""
    raw = Raw(rel_relay().smtp_port)
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("AUTH PLAIN " + PLAIN).startswith("503")


def test_auth_login_with_username_as_initial_response(rel_relay):
    """AUTH LOGIN <b64 user>: only the password is prompted."""
    raw = Raw(rel_relay().smtp_port)
    assert raw.smtp_reply().startswith("220")
    assert raw.smtp("EHLO dev").startswith("250")
    assert raw.smtp("AUTH LOGIN " + _b64(USERNAME)) == "334 UGFzc3dvcmQ6"
    assert raw.smtp(_b64(PASSWORD)).startswith("235")


def test_ehlo_advertises_old_style_auth_line(rel_relay):
    """EHLO lists both `AUTH LOGIN PLAIN` and the pre-RFC `AUTH=LOGIN PLAIN`."""
    raw = Raw(rel_relay().smtp_port)
    assert raw.smtp_reply().startswith("220")
    lines = raw.smtp("ehlo dev").split("\r\n")
    assert "250-AUTH LOGIN PLAIN" in lines and "250-AUTH=LOGIN PLAIN" in lines


def test_close_without_quit_after_250_counts_as_delivered(rel_relay, sandbox):
    """The client hangs up right after the final 250: the message stays delivered, once."""
    relay = rel_relay()
    raw = Raw(relay.smtp_port)
    _login(raw)
    _envelope(raw)
    assert raw.smtp(b"Subject: z\r\n\r\nz\r\n.").startswith("250")
    raw.sock.close()
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert msg.data == b"Subject: z\r\n\r\nz\r\n"


def test_eight_bit_body_without_8bitmime_and_smtputf8_address(rel_relay, sandbox):
    """8-bit bytes without BODY=8BITMIME pass byte-exact; an SMTPUTF8 address is forwarded."""
    relay = rel_relay()
    raw = Raw(relay.smtp_port)
    _login(raw)
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve \u00fcber\r\n".encode() + b"latin1 \xe9\r\n"
    assert raw.smtp("MAIL FROM:<a@x.test>").startswith("250")
    assert raw.smtp("RCPT TO:<b@x.test>").startswith("250")
    assert raw.smtp("DATA").startswith("354")
    assert raw.smtp(body + b".").startswith("250")
    assert raw.smtp("MAIL FROM:<j\u00f6rg@x.test> SMTPUTF8".encode()).startswith("250")
    assert raw.smtp("RCPT TO:<m\u00fcller@x.test>".encode()).startswith("250")
    assert raw.smtp("DATA").startswith("354")
    assert raw.smtp(b"Subject: u\r\n\r\nu\r\n.").startswith("250")
    raw.close()
    first, second = sandbox.smtp.wait_for_messages(2)
    assert first.data == body
    assert (second.mail_from, second.rcpt_tos) == ("j\u00f6rg@x.test", ("m\u00fcller@x.test",))


# --- device transcripts ---------------------------------------------------------------------------

def _fill(data: bytes) -> bytes:
    return (data.replace(b"{plain}", PLAIN.encode()).replace(b"{user}", _b64(USERNAME).encode())
            .replace(b"{password}", _b64(PASSWORD).encode()))


@pytest.mark.parametrize("bare_lf", ["normalize", "reject"])
@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda t: t.family.split(" (")[0])
def test_device_transcript_replays(rel_relay, sandbox, transcript: Transcript, bare_lf):
    """Each device dialog gets the replies it waits for and its message arrives byte-exact; in
    reject mode a bare-LF device instead gets 521 at its first bare LF, never a hang."""
    relay = rel_relay(smtp_listener=_listener(bare_lf=bare_lf))
    raw = Raw(relay.smtp_port)
    assert raw.smtp_reply().startswith("220")
    for step in transcript.steps:
        raw.send(_fill(step.send))
        if bare_lf == "reject" and b"\n" in step.send.replace(b"\r\n", b""):
            assert raw.smtp_reply().startswith("521")
            assert raw.closed_by_peer()
            return
        for code in step.expect:
            reply = raw.smtp_reply()
            assert reply.startswith(code), (step.send, reply)
    raw.close()
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert msg.data == transcript.delivered


# --- POP3 quirks ----------------------------------------------------------------------------------

def _pop_line(raw: Raw) -> bytes:
    return raw.line()


def _pop_multi(raw: Raw) -> list[bytes]:
    first = raw.line()
    assert first.startswith(b"+OK"), first
    lines = []
    while (line := raw.line()) != b".\r\n":
        lines.append(line)
    return lines


def test_pop3_quirks_user_at_domain_capa_auth_list_uidl_top_pipelined(rel_relay, sandbox):
    """USER name@domain-style logins, CAPA, bare AUTH (mechanism list), UIDL/TOP, and several
    commands (with bare LFs) in one write all get their replies in order."""
    sandbox.pop3.deliver(MAILBOX, b"Subject: one\r\n\r\nline1\r\nline2\r\n")
    relay = rel_relay()
    raw = Raw(relay.pop3_port)
    assert raw.line().startswith(b"+OK")
    assert b"USER\r\n" in _pop_multi_after(raw, b"CAPA\r\n")
    assert _pop_multi_after(raw, b"AUTH\r\n") == [b"PLAIN\r\n"]
    raw.send(f"USER {USERNAME}\nPASS {PASSWORD}\nSTAT\nUIDL\r\n".encode())
    assert raw.line().startswith(b"+OK") and raw.line().startswith(b"+OK")
    assert raw.line().startswith(b"+OK 1 ")
    uidl = _pop_multi(raw)
    assert len(uidl) == 1 and uidl[0].startswith(b"1 ")
    assert _pop_multi_after(raw, b"TOP 1 0\r\n") == [b"Subject: one\r\n", b"\r\n"]
    raw.send(b"QUIT\r\n")
    assert raw.line().startswith(b"+OK")


def _pop_multi_after(raw: Raw, command: bytes) -> list[bytes]:
    raw.send(command)
    return _pop_multi(raw)


def test_pop3_user_with_domain_is_the_local_username(rel_relay, sandbox):
    """`USER name@domain`: the whole address is the login name (local users may be addresses)."""
    relay = rel_relay()
    raw = Raw(relay.pop3_port)
    assert raw.line().startswith(b"+OK")
    raw.send(b"USER someone@x.test\r\nPASS wrong\r\n")
    assert raw.line().startswith(b"+OK")
    assert raw.line().startswith(b"-ERR")


def test_pop3_bare_lf_reject_closes(rel_relay):
    """listen.pop3.bare_lf: reject: -ERR and close at the first bare-LF command."""
    relay = rel_relay(pop3_listener=_listener(bare_lf="reject"))
    raw = Raw(relay.pop3_port)
    assert raw.line().startswith(b"+OK")
    raw.send(b"CAPA\n")
    assert raw.line().startswith(b"-ERR Bare LF")
    assert raw.closed_by_peer()


# --- legacy TLS -----------------------------------------------------------------------------------

def _s_client(port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                           "-cipher", "DEFAULT:@SECLEVEL=0", *args],
                          input=b"QUIT\r\n", capture_output=True, timeout=20, check=False)


@pytest.mark.parametrize("service", ["smtp", "pop3"])
def test_tls10_client_only_with_min_tls_version_1_0(rel_relay, tmp_path, caplog, service):
    """`openssl s_client -tls1`: refused at the default (1.2), accepted with min_tls_version 1.0
    (STARTTLS for SMTP, implicit TLS for POP3), with a loud start-up warning."""
    if shutil.which("openssl") is None:
        if CI:
            pytest.fail("openssl is required (apt-get install openssl)")
        pytest.skip("openssl not installed")
    cert, key = generate_self_signed(tmp_path / "tls")
    mode = "starttls" if service == "smtp" else "implicit"
    extra = ["-starttls", "smtp"] if service == "smtp" else []
    for version, ok in (("1.2", False), ("1.0", True)):
        listener = _listener(tls=mode, cert_file=cert, key_file=key, min_tls_version=version)
        relay = rel_relay(**{f"{service}_listener": listener})
        port = relay.smtp_port if service == "smtp" else relay.pop3_port
        result = _s_client(port, "-tls1", *extra)
        out = result.stdout.decode(errors="replace")
        handshake_done = "Cipher is (NONE)" not in out and "Protocol  : TLSv1\n" in out
        assert handshake_done == ok, out[-1500:]
        if ok:
            assert "min_tls_version is 1.0" in caplog.text
    # TLS 1.2 still works with the legacy setting.
    out = _s_client(port, "-tls1_2", *extra).stdout.decode(errors="replace")
    assert "Protocol  : TLSv1.2\n" in out and "Cipher is (NONE)" not in out


def test_upstream_side_stays_tls12_only() -> None:
    """min_tls_version affects local listeners only: upstream contexts keep TLS 1.2 as minimum."""
    from relay.config.model import UpstreamEndpoint
    from relay.tlsutil import client_context
    ctx = client_context(UpstreamEndpoint("127.0.0.1", 1, "starttls"))
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2


def test_tls10_only_device_replays_its_dialog_over_starttls(rel_relay, sandbox, tmp_path):
    """A TLS 1.0-only device (an old scanner): STARTTLS at TLS 1.0, then HELO + AUTH LOGIN and its
    message, against min_tls_version "1.0"; the message arrives byte-exact."""
    cert, key = generate_self_signed(tmp_path / "tls")
    relay = rel_relay(smtp_listener=_listener(tls="starttls", cert_file=cert, key_file=key,
                                              min_tls_version="1.0"))
    device = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    device.check_hostname = False
    device.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        device.minimum_version = device.maximum_version = ssl.TLSVersion.TLSv1
    device.set_ciphers("DEFAULT:@SECLEVEL=0")
    plain = socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=10)
    reader = plain.makefile("rb")
    assert reader.readline().startswith(b"220")
    plain.sendall(b"EHLO scanner\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    plain.sendall(b"STARTTLS\r\n")
    assert reader.readline().startswith(b"220")
    tls = device.wrap_socket(plain)
    assert tls.version() == "TLSv1"
    replies = tls.makefile("rb")
    helo_scanner = TRANSCRIPTS[1]
    for step in helo_scanner.steps:
        tls.sendall(_fill(step.send))
        for code in step.expect:
            line = replies.readline()
            assert line.startswith(code.encode()), (step.send, line)
    tls.close()
    [msg] = sandbox.smtp.wait_for_messages(1)
    assert msg.data == helo_scanner.delivered


@pytest.mark.parametrize("bare_lf", ["normalize", "reject"])
def test_bare_lf_after_chunks_went_upstream(rel_relay, sandbox, bare_lf):
    """A large message (part of it already streamed upstream) whose tail has bare LFs: normalize
    delivers it whole with CRLF only; reject answers 521 at once, closes, and the upstream never
    gets the end (no BDAT LAST, no final dot), so nothing is stored."""
    from relay.smtp.bdat import CHUNK_BYTES
    relay = rel_relay(smtp_listener=_listener(bare_lf=bare_lf))
    raw = Raw(relay.smtp_port)
    _login(raw)
    _envelope(raw)
    line = b"x" * 78 + b"\r\n"
    head = b"Subject: big\r\n\r\n" + line * (3 * CHUNK_BYTES // len(line))
    raw.send(head)
    raw.send(b"tail one\ntail two\n.\n")
    reply = raw.smtp_reply()
    if bare_lf == "reject":
        assert reply.startswith("521"), reply
        assert raw.closed_by_peer()
        with relay.smtp() as client:
            client.sendmail("a@x.test", ["b@x.test"], b"Subject: y\r\n\r\nok\r\n")
        assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"Subject: y\r\n\r\nok\r\n"]
        first = sandbox.smtp.transcripts()[0].verbs()
        assert ("DATA" in first or "BDAT" in first) and "BDAT LAST" not in first and "." not in first
        return
    assert reply.startswith("250"), reply
    [msg] = sandbox.smtp.wait_for_messages(1, timeout_s=30)
    assert msg.data == head + b"tail one\r\ntail two\r\n"

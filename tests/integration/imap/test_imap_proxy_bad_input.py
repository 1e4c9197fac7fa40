"""Bad input, timeouts and upstream failures at the relay's IMAP listener (real Dovecot behind)."""

from __future__ import annotations

import imaplib
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from imap_world import PASSWORD, TIMEOUT_S, imap_login, start_relay, trusting_context, user
from support.app_harness import wait_until
from support.relay_harness import ImapLines

from relay.config.model import LimitsConfig

pytestmark = pytest.mark.real_servers


@pytest.fixture
def raw(imap_world) -> Iterator[ImapLines]:
    """A raw connection to the plain listener."""
    client = ImapLines(imap_world.relay.ports["none"])
    yield client
    client.close()


def test_greeting_and_junk_before_login(raw: ImapLines) -> None:
    """Junk, unknown commands and post-login commands get BAD; the session still logs in after."""
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    raw.send(b"\x16\x03\x01\x02\x00\x01\x00\r\n")  # a TLS ClientHello on the plain port
    assert raw.line().startswith(b"* BAD")
    raw.send(b"a1 FROB\r\na2 SELECT INBOX\r\nGET / HTTP/1.1\r\n")
    assert raw.line() == b"a1 BAD Unknown command\r\n"
    assert raw.line() == b"a2 BAD SELECT is not allowed before login\r\n"
    assert raw.line() == b"GET BAD Unknown command\r\n"
    raw.send(b"a3 NOOP\r\n")
    assert raw.line() == b"a3 OK NOOP completed\r\n"


def test_overlong_line_and_absurd_literals(raw: ImapLines, account: int) -> None:
    """A 100 KB line, {9999999999} and APPEND literals before login: BAD, then a normal login."""
    raw.send(b"a1 LOGIN " + b"x" * 100_000 + b"\r\n")
    assert raw.line() == b"a1 BAD [TOOBIG] Command line too long\r\n"
    raw.send(b"a2 LOGIN {9999999999}\r\n")
    assert raw.line() == b"a2 BAD [TOOBIG] Literal too large\r\n"
    raw.send(b"a3 APPEND INBOX {20+}\r\n01234567890123456789\r\n")
    assert raw.line() == b"a3 BAD Literal not accepted here\r\n"
    raw.send(b'a4 LOGIN {%d}\r\n' % len(user(account)))
    assert raw.line() == b"+ Ready for literal data\r\n"
    raw.send(user(account).encode() + b' "%s"\r\n' % PASSWORD.encode())
    assert raw.until_tagged(b"a4")[-1].startswith(b"a4 OK [CAPABILITY ")
    raw.send(b"a5 SELECT INBOX\r\n")
    assert raw.until_tagged(b"a5")[-1].startswith(b"a5 OK")


def test_non_synchronising_huge_literal_closes(raw: ImapLines, imap_world) -> None:
    """{9999999999+} cannot be skipped: * BYE and close; the listener keeps serving others."""
    raw.send(b"a1 LOGIN {9999999999+}\r\nxxxx")
    assert raw.line() == b"* BYE [TOOBIG] Literal too large; closing the connection\r\n"
    assert raw.line() == b""
    other = ImapLines(imap_world.relay.ports["none"])
    other.send(b"b NOOP\r\n")
    assert other.line() == b"b OK NOOP completed\r\n"
    other.close()


def test_pipelined_commands_after_login_reach_upstream_in_order(raw: ImapLines, account: int) -> None:
    """Commands sent in one packet with LOGIN are forwarded after it, in order."""
    raw.send(b'a LOGIN %s "%s"\r\nb SELECT INBOX\r\nc NOOP\r\nd LOGOUT\r\n'
             % (user(account).encode(), PASSWORD.encode()))
    assert raw.until_tagged(b"a")[-1].startswith(b"a OK")
    assert raw.until_tagged(b"b")[-1].startswith(b"b OK")
    assert raw.until_tagged(b"c")[-1].startswith(b"c OK")
    lines = raw.until_tagged(b"d")
    assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"d OK")


def test_account_without_imap_gets_contactadmin(imap_world) -> None:
    """A local user whose account has no IMAP upstream gets NO [CONTACTADMIN]; nothing crashes."""
    relay = imap_world.relay
    config = relay.config
    i = relay.take_account()
    account = config.accounts[f"a{i}"]
    object.__setattr__(account, "imap", None)  # the frozen model, changed for this one account
    client = imaplib.IMAP4("127.0.0.1", relay.ports["none"], timeout=TIMEOUT_S)
    with pytest.raises(imaplib.IMAP4.error, match="CONTACTADMIN"):
        client.login(user(i), PASSWORD)
    client.logout()


@pytest.fixture(scope="module")
def short_relay(imap_world, tmp_path_factory):
    """A second relay with a 1 s IMAP idle timeout, a 3 s login deadline, a budget of 3 commands
    without progress and 2 connections per client (loopback exempt unless a test says otherwise)."""
    limits = LimitsConfig(auth_failure_delay_s=0.0, upstream_connect_timeout_s=2.0,
                          imap_idle_timeout_s=1.0, login_timeout_s=3.0,
                          max_commands_without_progress=3, max_connections_per_client=2)
    relay = start_relay(tmp_path_factory.mktemp("short"), imap_world.oauth, imap_world.dovecot,
                        limits=limits, listeners=("none",))
    yield relay
    relay.stop()


def test_idle_timeout_after_login_says_bye(short_relay) -> None:
    """After login, nothing in either direction for imap_idle_timeout_s: * BYE and close."""
    client = ImapLines(short_relay.ports["none"])
    client.send(b'a LOGIN %s "%s"\r\n' % (user(0).encode(), PASSWORD.encode()))
    assert client.until_tagged(b"a")[-1].startswith(b"a OK")
    started = time.monotonic()
    assert client.line() == b"* BYE Autologout; idle for too long\r\n"
    assert client.line() == b""
    assert 0.5 < time.monotonic() - started < 15
    client.close()


def test_slow_client_before_login_is_dropped(short_relay) -> None:
    """A client that never completes a command is disconnected with * BYE after the timeout."""
    client = ImapLines(short_relay.ports["none"])
    client.send(b"a LOG")
    assert client.line() == b"* BYE Autologout; idle for too long\r\n"
    assert client.line() == b""
    client.close()


def test_login_deadline_closes_a_busy_client_that_never_logs_in(short_relay) -> None:
    """CAPABILITY every 0.3 s keeps the idle timer happy, but no login within login_timeout_s
    ends the session with * BYE."""
    client = ImapLines(short_relay.ports["none"])
    started = time.monotonic()
    for n in range(100):
        client.send(b"c%d CAPABILITY\r\n" % n)
        line = client.line()
        if line.startswith(b"* BYE"):
            break
        assert line.startswith(b"* CAPABILITY ") and client.line() == b"c%d OK CAPABILITY completed\r\n" % n
        time.sleep(0.3)  # pacing the client, not guarding an assertion
    assert line == b"* BYE Autologout; no login in time\r\n"
    assert client.line() == b""
    assert 2.5 < time.monotonic() - started < 15
    client.close()


def test_commands_without_progress_close_the_session(short_relay) -> None:
    """NOOPs and refused commands count against max_commands_without_progress (3): the fourth
    gets * BYE and the connection closes; CAPABILITY does not count."""
    client = ImapLines(short_relay.ports["none"])
    client.send(b"a1 NOOP\r\na2 FROB\r\na3 CAPABILITY\r\na4 NOOP\r\na5 NOOP\r\n")
    assert client.line() == b"a1 OK NOOP completed\r\n"
    assert client.line() == b"a2 BAD Unknown command\r\n"
    assert client.until_tagged(b"a3")[-1] == b"a3 OK CAPABILITY completed\r\n"
    assert client.line() == b"a4 OK NOOP completed\r\n"
    assert client.line() == b"* BYE Too many commands without progress; closing\r\n"
    assert client.line() == b""
    client.close()


def test_per_client_connection_cap(short_relay) -> None:
    """With max_connections_per_client 2 (loopback not exempt here), a client's third connection
    gets * BYE [UNAVAILABLE]; once one closes, the client may connect again."""
    server = short_relay.servers["none"]
    server.client_slots.exempt_loopback = False
    try:
        first, second = ImapLines(short_relay.ports["none"]), ImapLines(short_relay.ports["none"])
        assert first.greeting.startswith(b"* OK") and second.greeting.startswith(b"* OK")
        third = ImapLines(short_relay.ports["none"])
        assert third.greeting == b"* BYE [UNAVAILABLE] Too many connections; try again later\r\n"
        assert third.line() == b""
        third.close()
        first.send(b"x LOGOUT\r\n")
        assert first.until_tagged(b"x")[-1] == b"x OK LOGOUT completed\r\n"
        first.close()
        wait_until(lambda: server.client_slots.open_for("127.0.0.1") <= 1, 10,
                   "the relay to release the slot (when the session's task ends)")
        again = ImapLines(short_relay.ports["none"])
        assert again.greeting.startswith(b"* OK")
        again.close()
        second.close()
    finally:
        server.client_slots.exempt_loopback = True


def test_upstream_down_is_no_unavailable(short_relay) -> None:
    """An upstream that refuses connections: NO [UNAVAILABLE], and the client may retry."""
    i = short_relay.take_account()
    account = short_relay.config.accounts[f"a{i}"]
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    object.__setattr__(account, "imap", replace(account.imap, port=port))
    client = imaplib.IMAP4("127.0.0.1", short_relay.ports["none"], timeout=TIMEOUT_S)
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        client.login(user(i), PASSWORD)
    client.logout()


def test_listener_survives_many_bad_connections(imap_world, account: int) -> None:
    """Fifty connections that send junk and vanish leave the listener serving a real login."""
    for n in range(50):
        sock = socket.create_connection(("127.0.0.1", imap_world.relay.ports["none"]), timeout=TIMEOUT_S)
        sock.sendall(bytes([n % 256]) * 5000 + b"{99999999999+}\r\n")
        sock.close()
    client = imap_login(imap_world.relay.ports["none"], account)
    assert client.select("INBOX")[0] == "OK"
    client.logout()



def test_plaintext_login_refused_off_loopback_until_starttls(imap_world, tmp_path_factory) -> None:
    """On a listener bound to 0.0.0.0 (not loopback, no allow list) the greeting says
    LOGINDISABLED and LOGIN is NO [PRIVACYREQUIRED]; after STARTTLS the same login works."""
    relay = start_relay(tmp_path_factory.mktemp("wide"), imap_world.oauth, imap_world.dovecot,
                        listen_host="0.0.0.0", listeners=("starttls",))
    try:
        client = imaplib.IMAP4("127.0.0.1", relay.ports["starttls"], timeout=TIMEOUT_S)
        assert "LOGINDISABLED" in client.capabilities and "AUTH=PLAIN" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(user(0), PASSWORD)
        client.starttls(ssl_context=trusting_context(imap_world.cert))
        assert "AUTH=PLAIN" in client.capabilities and "LOGINDISABLED" not in client.capabilities
        assert client.login(user(0), PASSWORD)[0] == "OK"
        client.logout()
    finally:
        relay.stop()


def test_relay_health_probes_the_imap_listener(imap_world) -> None:
    """`relay health`'s probe reads the IMAP greeting (also over TLS on connect) and logs out."""
    from relay.commands.health import probe
    from relay.config.model import ListenerConfig

    for tls in ("none", "implicit"):
        listener = ListenerConfig(True, "127.0.0.1", imap_world.relay.ports[tls], tls)  # type: ignore[arg-type]
        ok, seen = probe("imap", listener, 5.0)
        assert ok and seen.startswith("* OK [CAPABILITY IMAP4rev1"), seen

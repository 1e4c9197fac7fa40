"""The POP3 proxy keeps mailbox semantics exactly: byte-exact replies, deletions only on QUIT."""

from __future__ import annotations

import hashlib
import poplib
from concurrent.futures import ThreadPoolExecutor

import pytest

from relay.config.model import UpstreamEndpoint
from relay.sandbox.pop3_upstream import SandboxPop3Server

from .conftest import mailbox, username, with_limits

MSG_DOTS = (b"From: a@example.com\r\nSubject: dots\r\n\r\n"
            b".leading dot\r\n..two dots\r\n.\r\n. space\r\nmiddle . dot\r\n"
            + "Gr\u00fc\u00dfe \u2603\r\n".encode() + b"x" * 998 + b"\r\nlast\r\n")
MSG_PLAIN = b"From: b@example.com\r\nSubject: plain\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"


def stuffed(message: bytes) -> bytes:
    """The wire form of a message body in a RETR reply: dot-stuffed lines, then '.'."""
    lines = message.split(b"\r\n")[:-1]
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"


def test_list_uidl_top_retr_through_poplib(pop3_relay, sandbox):
    """poplib sees the upstream maildrop: STAT/LIST/UIDL/TOP/RETR including '.'-lines."""
    uids = [sandbox.pop3.deliver(mailbox(0), m) for m in (MSG_DOTS, MSG_PLAIN)]
    relay = pop3_relay()
    client = relay.pop()
    assert client.stat() == (2, len(MSG_DOTS) + len(MSG_PLAIN))
    assert client.list()[1] == [f"1 {len(MSG_DOTS)}".encode(), f"2 {len(MSG_PLAIN)}".encode()]
    assert client.list(2) == f"+OK 2 {len(MSG_PLAIN)}".encode()
    assert client.uidl()[1] == [f"{n} {uid}".encode() for n, uid in enumerate(uids, 1)]
    assert client.uidl(1) == f"+OK 1 {uids[0]}".encode()
    assert client.top(2, 1)[1] == [b"From: b@example.com", b"Subject: plain", b"", b"line 1"]
    _, lines, _ = client.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == MSG_DOTS
    assert client.retr(2)[1] == MSG_PLAIN.split(b"\r\n")[:-1]
    assert client.quit().startswith(b"+OK")


def test_retr_and_top_are_byte_exact_on_the_wire(pop3_relay, sandbox):
    """The raw RETR/TOP replies are the upstream's bytes: stuffing and terminator unchanged."""
    sandbox.pop3.deliver(mailbox(0), MSG_DOTS)
    relay = pop3_relay()
    raw = relay.raw()
    assert raw.cmd(b"USER " + username(0).encode()).startswith(b"+OK")
    assert raw.cmd(b"PASS pop3 horse battery").startswith(b"+OK")
    assert raw.cmd(b"RETR 1") == f"+OK {len(MSG_DOTS)} octets\r\n".encode()
    assert raw.until_terminator() == stuffed(MSG_DOTS)
    assert raw.cmd(b"TOP 1 2") == b"+OK Top of message follows\r\n"
    assert raw.until_terminator() == stuffed(MSG_DOTS.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
                                             b".leading dot\r\n..two dots\r\n")
    assert raw.cmd(b"LIST 7") == b"-ERR No such message\r\n"  # upstream -ERR passed on
    assert raw.cmd(b"QUIT").startswith(b"+OK")
    assert raw.closed_by_server()


def test_empty_maildrop_and_pipelined_commands(pop3_relay, sandbox):
    """An empty LIST ends at once; pipelined commands are answered in order, completely."""
    relay = pop3_relay()
    raw = relay.raw()
    raw.send(b"USER app0\r\nPASS pop3 horse battery\r\nLIST\r\nSTAT\r\nUIDL\r\nNOOP\r\n")
    assert raw.line().startswith(b"+OK")  # USER
    assert raw.line() == b"+OK User successfully authenticated.\r\n"
    assert raw.line().startswith(b"+OK") and raw.until_terminator() == b".\r\n"
    assert raw.line() == b"+OK 0 0\r\n"
    assert raw.line().startswith(b"+OK") and raw.until_terminator() == b".\r\n"
    assert raw.line() == b"+OK\r\n"
    raw.close()


def test_dele_then_quit_removes_the_message(pop3_relay, sandbox):
    """DELE followed by QUIT commits the deletion upstream."""
    sandbox.pop3.deliver(mailbox(0), MSG_PLAIN)
    sandbox.pop3.deliver(mailbox(0), MSG_DOTS)
    relay = pop3_relay()
    client = relay.pop()
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    relay.wait_unlocked()
    assert [m for _, m in sandbox.pop3.mailbox(mailbox(0))] == [MSG_DOTS]


@pytest.mark.parametrize("ending", ["disconnect", "rset_quit"])
def test_dele_without_commit_deletes_nothing(pop3_relay, sandbox, ending):
    """DELE then a disconnect (no QUIT), or DELE + RSET + QUIT, leaves the maildrop intact."""
    sandbox.pop3.deliver(mailbox(0), MSG_PLAIN)
    relay = pop3_relay()
    client = relay.pop()
    client.dele(1)
    if ending == "disconnect":
        client.close()  # poplib: drop the connection without QUIT
    else:
        client.rset()
        client.quit()
    relay.wait_unlocked()
    assert sandbox.pop3.counters.get("quit_update", 0) == (0 if ending == "disconnect" else 1)
    assert len(sandbox.pop3.mailbox(mailbox(0))) == 1
    again = relay.pop()  # the maildrop is usable again and still holds the message
    assert again.stat()[0] == 1
    again.quit()


def test_upstream_drop_mid_retr_closes_client_without_terminator(pop3_relay, sandbox):
    """If the upstream dies mid-RETR, the client sees the connection close with no final '.'."""
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 16384 + b"\r\n"
    sandbox.pop3.deliver(mailbox(0), big)
    sandbox.pop3.drop_mid_retr_after_bytes = 70_000
    relay = pop3_relay()
    raw = relay.raw()
    raw.cmd(b"USER app0")
    assert raw.cmd(b"PASS pop3 horse battery").startswith(b"+OK")
    assert raw.cmd(b"RETR 1").startswith(b"+OK")
    received = bytearray()
    while chunk := raw.line():
        received += chunk
    assert 0 < len(received) < len(big)
    assert not received.endswith(b"\r\n.\r\n")
    raw.close()
    relay.wait_unlocked()
    assert len(sandbox.pop3.mailbox(mailbox(0))) == 1


def test_upstream_drop_mid_retr_is_an_error_for_poplib(pop3_relay, sandbox):
    """poplib's RETR raises instead of returning a truncated message; a pending DELE is dropped."""
    big = b"Subject: big\r\n\r\n" + b"line of text\r\n" * 20000
    sandbox.pop3.deliver(mailbox(0), big)
    sandbox.pop3.deliver(mailbox(0), MSG_PLAIN)
    sandbox.pop3.drop_mid_retr_after_bytes = 50_000
    relay = pop3_relay()
    client = relay.pop()
    client.dele(2)
    with pytest.raises(poplib.error_proto, match="EOF"):
        client.retr(1)
    relay.wait_unlocked()
    assert len(sandbox.pop3.mailbox(mailbox(0))) == 2


def test_fifty_concurrent_sessions_on_different_accounts(pop3_relay, sandbox):
    """50 accounts read and delete their own message at the same time, each getting its own."""
    count = 50
    messages = {i: f"Subject: n{i}\r\n\r\nbody of {i}\r\n".encode() * (i + 1) for i in range(count)}
    for i, message in messages.items():
        sandbox.pop3.deliver(mailbox(i), message)
    relay = pop3_relay(accounts=count)

    def session(i: int) -> str:
        client = relay.pop(i)
        assert client.stat() == (1, len(messages[i]))
        _, lines, _ = client.retr(1)
        client.dele(1)
        client.quit()
        return hashlib.sha256(b"\r\n".join(lines) + b"\r\n").hexdigest()

    with ThreadPoolExecutor(count) as pool:
        digests = list(pool.map(session, range(count)))
    assert digests == [hashlib.sha256(messages[i]).hexdigest() for i in range(count)]
    for i in range(count):
        relay.wait_unlocked(i)
        assert sandbox.pop3.mailbox(mailbox(i)) == []


def test_shutdown_ends_open_sessions_without_committing(pop3_relay, sandbox):
    """stop(grace) ends a session still in TRANSACTION by closing upstream without QUIT."""
    sandbox.pop3.deliver(mailbox(0), MSG_PLAIN)
    relay = pop3_relay()
    client = relay.pop()
    client.dele(1)
    relay.stop(grace_s=0.2)
    with pytest.raises((poplib.error_proto, OSError)):
        client.noop()
    relay.wait_unlocked()
    assert len(sandbox.pop3.mailbox(mailbox(0))) == 1
    assert sandbox.pop3.counters.get("quit_update", 0) == 0


def test_upstream_reached_with_stls(pop3_relay, sandbox):
    """An upstream that needs STLS (not TLS on connect) is upgraded, verified and used."""
    upstream = SandboxPop3Server(sandbox.oauth.validate_access_token, sandbox.cert_file,
                                 sandbox.key_file, tls_mode="starttls",
                                 authorize=sandbox.oauth.token_allows).start()
    try:
        upstream.deliver(mailbox(0), MSG_DOTS)
        relay = pop3_relay(upstream=UpstreamEndpoint(sandbox.host, upstream.port, "starttls",
                                                     ca_file=sandbox.ca_file))
        client = relay.pop()
        assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == MSG_DOTS
        client.quit()
        assert upstream.counters.get("auth_ok") == 1
    finally:
        upstream.stop()


@pytest.mark.parametrize("failure", ["upstream_gone", "upstream_slow"])
def test_upstream_failure_between_commands_gives_sys_temp_and_closes(pop3_relay, sandbox, failure):
    """An upstream that vanishes or stops answering mid-session: `-ERR [SYS/TEMP]`, then close."""
    sandbox.pop3.deliver(mailbox(0), MSG_PLAIN)
    relay = pop3_relay(limits=with_limits(upstream_command_timeout_s=0.5))
    raw = relay.raw()
    raw.cmd(b"USER app0")
    assert raw.cmd(b"PASS pop3 horse battery").startswith(b"+OK")
    assert raw.cmd(b"DELE 1").startswith(b"+OK")
    if failure == "upstream_gone":
        sandbox.pop3.stop()
    else:
        sandbox.pop3.delay_s = 3.0
    assert raw.cmd(b"STAT") == b"-ERR [SYS/TEMP] Upstream mail server connection lost\r\n"
    assert raw.closed_by_server()
    if failure == "upstream_slow":
        relay.wait_unlocked()
        assert len(sandbox.pop3.mailbox(mailbox(0))) == 1

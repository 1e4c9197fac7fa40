"""The sandbox upstream POP3 server, driven by poplib and by a raw line client over loopback TLS."""

from __future__ import annotations

import base64
import hashlib
import json
import poplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.app_harness import wait_until

from relay.sandbox.lineclient import LineClient
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from relay.sandbox.pop3_upstream import SandboxPop3Server
from relay.sandbox.world import SandboxWorld
from relay.sasl import encode_xoauth2

USER = "alice@sandbox.test"
MSG1 = (b"From: a@b.test\r\nSubject: one\r\n\r\n.dot line\r\n..two dots\r\n.\r\nbody 3\r\nbody 4\r\n")
MSG2 = b"Subject: two\r\n\r\nsecond\r\n"


def stuffed(data: bytes) -> bytes:
    return (b"\r\n" + data).replace(b"\r\n.", b"\r\n..")[2:]


def pop_client(world: SandboxWorld, user: str = USER, token: str | None = None) -> poplib.POP3_SSL:
    ctx = ssl.create_default_context(cafile=str(world.ca_file))
    client = poplib.POP3_SSL(world.host, world.pop3_port, context=ctx, timeout=10)
    token = token or world.oauth.issue_access_token(user)
    client._putcmd("AUTH XOAUTH2")
    assert client._getline()[0] == b"+ "
    assert client._shortcmd(encode_xoauth2(user, token)).startswith(b"+OK")
    return client


def raw_client(world: SandboxWorld, user: str = USER) -> LineClient:
    c = LineClient(world.host, world.pop3_port, ca_file=world.ca_file, implicit_tls=True)
    assert c.read_line().startswith("+OK")
    c.send_line("AUTH XOAUTH2 " + encode_xoauth2(user, world.oauth.issue_access_token(user)))
    assert c.read_line() == "+OK User successfully authenticated."
    return c


@pytest.fixture
def world(sandbox: SandboxWorld) -> SandboxWorld:
    sandbox.pop3.deliver(USER, MSG1)
    sandbox.pop3.deliver(USER, MSG2)
    return sandbox


def test_poplib_xoauth2_with_endpoint_token_and_transaction_commands(world: SandboxWorld) -> None:
    """poplib over TLS logs in with XOAUTH2 (token from /token) and STAT/LIST/UIDL/TOP/RETR agree."""
    r = httpx.post(world.oauth.token_url, data={"grant_type": "client_credentials"},
                   auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    client = pop_client(world, token=r.json()["access_token"])
    try:
        assert client.stat() == (2, len(MSG1) + len(MSG2))
        assert client.list()[1] == [b"1 %d" % len(MSG1), b"2 %d" % len(MSG2)]
        uids = [uid for uid, _ in world.pop3.mailbox(USER)]
        assert client.uidl()[1] == [f"1 {uids[0]}".encode(), f"2 {uids[1]}".encode()]
        assert client.uidl(2) == f"+OK 2 {uids[1]}".encode()
        assert client.top(1, 1)[1] == [b"From: a@b.test", b"Subject: one", b"", b".dot line"]
        assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == MSG1
    finally:
        client.quit()


def test_retr_wire_bytes_are_stuffed_and_crlf_exact(world: SandboxWorld) -> None:
    """On the wire RETR sends the +OK line, the byte-stuffed message with CRLFs, then '.'."""
    with raw_client(world) as c:
        c.send_line("RETR 1")
        assert c.read_line() == f"+OK {len(MSG1)} octets"
        assert c.read_multiline() == stuffed(MSG1)
        c.send_line("TOP 1 0")
        assert c.read_line().startswith("+OK")
        assert c.read_multiline() == b"From: a@b.test\r\nSubject: one\r\n\r\n"
        c.send_line("LIST 9")
        assert c.read_line().startswith("-ERR")


def test_capa_offers_sasl_not_user(world: SandboxWorld) -> None:
    """CAPA lists TOP, UIDL, RESP-CODES, AUTH-RESP-CODE, PIPELINING, SASL XOAUTH2; not USER or STLS."""
    with LineClient(world.host, world.pop3_port, ca_file=world.ca_file, implicit_tls=True) as c:
        c.read_line()
        c.send_line("CAPA")
        assert c.read_line().startswith("+OK")
        caps = c.read_multiline().decode().split("\r\n")
        expected = {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "SASL XOAUTH2 OAUTHBEARER"}
        assert expected <= set(caps)
        assert "USER" not in caps and "STLS" not in caps
        c.send_line("USER alice")
        assert c.read_line().startswith("-ERR")


def test_bad_token_json_challenge_then_auth_failed(world: SandboxWorld) -> None:
    """A bad token gets '+ <b64 JSON>', then after the empty line '-ERR [AUTH] Authentication failed.'."""
    with LineClient(world.host, world.pop3_port, ca_file=world.ca_file, implicit_tls=True) as c:
        c.read_line()
        c.send_line("AUTH XOAUTH2")
        assert c.read_line() == "+ "
        c.send_line(encode_xoauth2(USER, "not-a-token"))
        line = c.read_line()
        assert line.startswith("+ ")
        error = json.loads(base64.b64decode(line[2:]))
        assert error == {"status": "401", "schemes": "bearer", "scope": "mail"}
        c.send_line("")
        assert c.read_line() == "-ERR [AUTH] Authentication failed."
    assert world.pop3.counters["auth_failed"] == 1


def test_dele_then_drop_without_quit_deletes_nothing(world: SandboxWorld) -> None:
    """DELE followed by a dropped connection deletes nothing and releases the maildrop lock."""
    with raw_client(world) as c:
        c.send_line("DELE 1")
        assert c.read_line().startswith("+OK")
        c.send_line("STAT")
        assert c.read_line() == f"+OK 1 {len(MSG2)}"
    # Once the maildrop lock is released the dropped session is over: no deletion can follow.
    wait_until(lambda: not world.pop3.is_locked(USER), 10, "the dropped session to release the lock")
    assert len(world.pop3.mailbox(USER)) == 2
    pop_client(world).quit()


def test_dele_quit_deletes_and_rset_undoes(world: SandboxWorld) -> None:
    """RSET undoes DELE marks; DELE + QUIT removes the message for good."""
    client = pop_client(world)
    client.dele(1)
    client.rset()
    assert client.stat()[0] == 2
    client.dele(2)
    client.quit()
    assert [data for _, data in world.pop3.mailbox(USER)] == [MSG1]


def test_second_session_gets_in_use(world: SandboxWorld) -> None:
    """While one session is in TRANSACTION, a second login for the same user gets [IN-USE]."""
    with raw_client(world) as first:
        with LineClient(world.host, world.pop3_port, ca_file=world.ca_file, implicit_tls=True) as second:
            second.read_line()
            second.send_line("AUTH XOAUTH2 " + encode_xoauth2(USER, world.oauth.issue_access_token(USER)))
            assert second.read_line().startswith("-ERR [IN-USE]")
        first.send_line("QUIT")
        assert first.read_line().startswith("+OK")


def test_fault_switches_err_on_drop_mid_retr_never_greet_delay(world: SandboxWorld) -> None:
    """err_on answers the given reply; drop_mid_retr closes after N bytes; never_greet stays silent."""
    pop3 = world.pop3
    pop3.err_on["RETR"] = "-ERR [SYS/TEMP] busy"
    with raw_client(world) as c:
        c.send_line("RETR 1")
        assert c.read_line() == "-ERR [SYS/TEMP] busy"
        pop3.err_on.clear()
        pop3.drop_mid_retr_after_bytes = 20
        c.send_line("RETR 1")
        assert c.read_line().startswith("+OK")
        assert c.read_until_eof() == stuffed(MSG1)[:20]
    assert len(pop3.mailbox(USER)) == 2
    pop3.drop_mid_retr_after_bytes = None
    pop3.delay_s = 0.2
    start = time.monotonic()
    with LineClient(world.host, world.pop3_port, ca_file=world.ca_file, implicit_tls=True) as c:
        assert c.read_line().startswith("+OK")
    assert time.monotonic() - start >= 0.2
    pop3.delay_s = 0
    pop3.never_greet = True
    with LineClient(world.host, world.pop3_port, ca_file=world.ca_file, implicit_tls=True,
                    timeout_s=0.3) as c, pytest.raises(socket.timeout):
        c.read_line()


def test_large_message_streams_byte_exact(world: SandboxWorld) -> None:
    """A 50 MB message with dot lines is retrieved byte-exact (chunked, stuffed across chunk edges)."""
    line = b"." + b"z" * 1021 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (50 * 1024 * 1024 // len(line))
    world.pop3.deliver("big@sandbox.test", big)
    with raw_client(world, "big@sandbox.test") as c:
        c.send_line("RETR 1")
        assert c.read_line() == f"+OK {len(big)} octets"
        wire = c.read_multiline()
    assert hashlib.sha256(wire).digest() == hashlib.sha256(stuffed(big)).digest()


@pytest.fixture
def stls_server(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[SandboxPop3Server]:
    server = SandboxPop3Server(sandbox.oauth.validate_access_token, sandbox.cert_file, sandbox.key_file,
                               tls_mode="starttls", initial_response_allowed=False)
    with server:
        yield server


def test_stls_mode_requires_tls_and_rejects_initial_response(sandbox: SandboxWorld,
                                                             stls_server: SandboxPop3Server) -> None:
    """In STLS mode CAPA offers STLS, AUTH needs TLS first, and (Microsoft-like) initial responses fail."""
    token = sandbox.oauth.issue_access_token(USER)
    with LineClient(stls_server.host, stls_server.port, ca_file=sandbox.ca_file) as c:
        c.read_line()
        c.send_line("CAPA")
        c.read_line()
        assert "STLS" in c.read_multiline().decode().split("\r\n")
        c.send_line("AUTH XOAUTH2")
        assert c.read_line().startswith("-ERR [AUTH]")
        c.send_line("STLS")
        assert c.read_line().startswith("+OK")
        c.starttls()
        c.send_line("AUTH XOAUTH2 " + encode_xoauth2(USER, token))
        assert c.read_line() == "-ERR Protocol error"
        c.send_line("AUTH XOAUTH2")
        assert c.read_line() == "+ "
        c.send_line(encode_xoauth2(USER, token))
        assert c.read_line().startswith("+OK")

"""Python imaplib -> relay (plain, STARTTLS, TLS) -> Dovecot IMAP with XOAUTH2: logins, FETCH, IDLE."""

from __future__ import annotations

import imaplib
import socket

import pytest
from imap_world import PASSWORD, TIMEOUT_S, imap_login, mailbox, trusting_context, user
from real_clients import make_message
from support.relay_harness import ImapLines

pytestmark = pytest.mark.real_servers


def direct_fetch(world, i: int, uid: bytes) -> bytes:
    """FETCH a message straight from Dovecot with XOAUTH2 (the reference bytes)."""
    client = imaplib.IMAP4_SSL("127.0.0.1", world.dovecot.imaps_port,
                               ssl_context=trusting_context(world.cert), timeout=TIMEOUT_S)
    token = world.oauth.issue_access_token(mailbox(i))
    client.authenticate("XOAUTH2", lambda _: f"user={mailbox(i)}\x01auth=Bearer {token}\x01\x01".encode())
    client.select("INBOX", readonly=True)
    typ, data = client.uid("FETCH", uid, "(BODY.PEEK[])")
    client.logout()
    assert typ == "OK"
    return data[0][1]


@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
def test_login_select_fetch_byte_exact(imap_world, account: int, tls: str) -> None:
    """A delivered message fetched through the relay equals the one fetched from Dovecot directly."""
    message = make_message(f"imaplib {tls}", body_lines=50, to=mailbox(account))
    imap_world.dovecot.deliver(mailbox(account), message)
    client = imap_login(imap_world.relay.ports[tls], account, tls=tls, cert=imap_world.cert)
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    typ, data = client.uid("FETCH", "1", "(BODY.PEEK[])")
    assert typ == "OK"
    fetched = data[0][1]
    assert fetched == direct_fetch(imap_world, account, b"1")
    assert fetched.endswith(message.split(b"\r\n\r\n", 1)[1])
    assert client.logout()[0] == "BYE"


def test_login_reply_carries_upstream_capabilities(imap_world, account: int) -> None:
    """The tagged OK of LOGIN lists Dovecot's post-login capabilities, minus login-only ones."""
    client = imaplib.IMAP4("127.0.0.1", imap_world.relay.ports["none"], timeout=TIMEOUT_S)
    assert "AUTH=PLAIN" in client.capabilities and "IMAP4REV1" in client.capabilities
    typ, data = client.login(user(account), PASSWORD)
    assert typ == "OK"
    text = data[0].decode()
    assert text.startswith("[CAPABILITY IMAP4rev1") and "IDLE" in text and "AUTH=" not in text
    typ, caps = client.capability()  # now answered by Dovecot itself, through the relay
    assert typ == "OK" and b"IDLE" in caps[0]
    client.logout()


def test_authenticate_plain_through_relay(imap_world, account: int) -> None:
    """AUTHENTICATE PLAIN (imaplib waits for the continuation) logs in like LOGIN."""
    client = imaplib.IMAP4("127.0.0.1", imap_world.relay.ports["none"], timeout=TIMEOUT_S)
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0{user(account)}\0{PASSWORD}".encode())
    assert typ == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_wrong_password_is_no_authenticationfailed(imap_world, account: int) -> None:
    """A wrong local password is a tagged NO [AUTHENTICATIONFAILED]; the session can retry."""
    client = imaplib.IMAP4("127.0.0.1", imap_world.relay.ports["none"], timeout=TIMEOUT_S)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(user(account), "wrong")
    assert client.login(user(account), PASSWORD)[0] == "OK"
    client.logout()


def test_revoked_token_is_refreshed_once_and_login_works(imap_world, account: int) -> None:
    """Dovecot refuses the stored token (revoked at the provider): the relay refreshes and retries."""
    async def current() -> str:
        return (await imap_world.relay.tokens.get_token(f"a{account}")).reveal()

    old = imap_world.relay.loop.run(current())
    imap_world.oauth.revoke_access_token(old)
    client = imap_login(imap_world.relay.ports["none"], account)
    assert client.select("INBOX")[0] == "OK"
    client.logout()
    assert imap_world.relay.loop.run(current()) != old


def test_large_fetch_and_append_literals(imap_world, account: int) -> None:
    """A 3 MB APPEND (a literal through the relay) and its FETCH come back byte for byte."""
    body = b"".join(b"%08d %s\r\n" % (n, b"x" * 70) for n in range(40000))
    message = (b"From: <a@example.org>\r\nTo: <b@example.com>\r\nSubject: big\r\n"
               b"Message-ID: <big@client.test>\r\n\r\n" + body)
    client = imap_login(imap_world.relay.ports["none"], account)
    typ, _ = client.append("INBOX", None, None, message)
    assert typ == "OK"
    client.select("INBOX")
    typ, data = client.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == message
    client.logout()


def test_idle_sees_lmtp_delivery(imap_world, account: int) -> None:
    """An IDLE client is told about a message delivered by LMTP while it idles."""
    client = imap_login(imap_world.relay.ports["none"], account)
    client.select("INBOX")
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    imap_world.dovecot.deliver(mailbox(account), make_message("during idle", to=mailbox(account)))
    client.sock.settimeout(TIMEOUT_S)
    line = client.readline()
    while line.startswith(b"* OK"):  # keep-alives
        line = client.readline()
    assert line == b"* 1 EXISTS\r\n", imap_world.diagnostics()
    client.send(b"DONE\r\n")
    while not (line := client.readline()).startswith(tag):
        pass
    assert line.startswith(tag + b" OK")
    client.logout()


def test_client_disconnect_after_logout_half_close(imap_world, account: int) -> None:
    """A client that sends LOGOUT and shuts its sending side still gets BYE and the tagged OK."""
    client = ImapLines(imap_world.relay.ports["none"], TIMEOUT_S)
    client.send(b'a LOGIN %s "%s"\r\nb LOGOUT\r\n' % (user(account).encode(), PASSWORD.encode()))
    client.sock.shutdown(socket.SHUT_WR)
    data = client.until_closed()
    client.close()
    assert b"a OK [CAPABILITY" in data and b"* BYE" in data and b"b OK" in data


def test_compress_deflate_works_end_to_end(imap_world, account: int) -> None:
    """COMPRESS=DEFLATE is passed on in the login reply and works: after the login the relay
    splices bytes, so the client and Dovecot compress end to end (RFC 4978)."""
    import zlib

    client = imaplib.IMAP4("127.0.0.1", imap_world.relay.ports["none"], timeout=TIMEOUT_S)
    typ, data = client.login(user(account), PASSWORD)
    assert typ == "OK" and b"COMPRESS=DEFLATE" in data[0]
    tag = client._new_tag()
    client.send(tag + b" COMPRESS DEFLATE\r\n")
    assert client.readline().startswith(tag + b" OK")
    deflate = zlib.compressobj(wbits=-15)
    inflate = zlib.decompressobj(wbits=-15)
    client.sock.sendall(deflate.compress(b"n1 NOOP\r\nn2 LOGOUT\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    received = b""
    while b"n2 OK" not in received:
        chunk = client.sock.recv(65536)
        assert chunk, f"closed early; got {received!r}"
        received += inflate.decompress(chunk)
    assert b"n1 OK" in received and b"* BYE" in received
    client.sock.close()

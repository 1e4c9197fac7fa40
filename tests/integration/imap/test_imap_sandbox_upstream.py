"""The relay against the sandbox IMAP upstream (Gmail-like): two-step XOAUTH2 without SASL-IR,
the error challenge answered with an empty line, forced refresh, and what the client sees."""

from __future__ import annotations

import imaplib
from collections.abc import Iterator

import pytest
from sandbox_imap_relay import start_sandbox_imap_relay

from relay.sandbox.loop import LoopThread
from relay.sandbox.world import SandboxWorld
from relay.tokens.manager import TokenManager

MAILBOX = "gmail-like@sandbox.test"
PASSWORD = "sandbox imap pw"


@pytest.fixture(scope="module")
def sandbox_relay(tmp_path_factory) -> Iterator[tuple[SandboxWorld, int, LoopThread, TokenManager]]:
    """The sandbox world (IMAP without SASL-IR) and a RelayApp (relay.yaml, IMAP listener) in front."""
    base = tmp_path_factory.mktemp("imap-sandbox")
    world = SandboxWorld.start(base / "world")
    world.imap.sasl_ir = False
    relay = start_sandbox_imap_relay(world, base, name="g", username="gapp", password=PASSWORD,
                                     mailbox=MAILBOX)
    try:
        yield world, relay.imap_port, relay.thread, relay.tokens
    finally:
        relay.stop(2)
        world.stop()


def test_two_step_xoauth2_and_fetch(sandbox_relay) -> None:
    """Without SASL-IR upstream the relay waits for '+' and sends the token; FETCH is byte-exact."""
    world, port, _, _ = sandbox_relay
    message = b"From: a@example.org\r\nSubject: sandbox\r\n\r\nbody\r\n.dot line\r\n"
    world.pop3.deliver(MAILBOX, message)
    before = world.imap.counters.get("auth_ok", 0)
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    typ, data = client.login("gapp", PASSWORD)
    assert typ == "OK" and b"COMPRESS=DEFLATE" in data[0] and b"SASL-IR" not in data[0]
    client.select("INBOX")
    typ, fetched = client.fetch("1", "(BODY[])")
    assert typ == "OK" and fetched[0][1] == message
    client.logout()
    assert world.imap.counters["auth_ok"] == before + 1


def test_refused_token_challenge_then_refresh(sandbox_relay) -> None:
    """A revoked token: Gmail-style challenge, empty line, NO; the relay refreshes once and logs in."""
    world, port, thread, tokens = sandbox_relay

    async def current() -> str:
        return (await tokens.get_token("g")).reveal()

    world.oauth.revoke_access_token(thread.run(current()))
    failed = world.imap.counters.get("auth_failed", 0)
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    assert client.login("gapp", PASSWORD)[0] == "OK"
    client.logout()
    assert world.imap.counters["auth_failed"] == failed + 1


def test_all_tokens_refused_is_contactadmin(sandbox_relay) -> None:
    """When the refreshed token is refused too, the client gets NO [CONTACTADMIN]."""
    world, port, _, _ = sandbox_relay
    world.imap.authorize = lambda token, user: False
    try:
        client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        with pytest.raises(imaplib.IMAP4.error, match="CONTACTADMIN"):
            client.login("gapp", PASSWORD)
        client.logout()
    finally:
        world.imap.authorize = world.oauth.token_allows

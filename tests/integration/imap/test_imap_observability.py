"""What an operator sees of IMAP sessions on the admin listener: /metrics counts IMAP sessions by
outcome (ok; auth_failed for a refused local login; upstream_error for a refused upstream login)
and /status names the account's last upstream error, as for POP3.

A RelayApp from relay.yaml with an admin listener, in front of the sandbox IMAP upstream; the
admin endpoints are read over HTTP on loopback, as Prometheus and `relay status` do."""

from __future__ import annotations

import http.client
import imaplib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sandbox_imap_relay import start_sandbox_imap_relay
from support.app_harness import AppRelay, wait_until

from relay.config.sections import AdminConfig
from relay.sandbox.world import SandboxWorld

MAILBOX = "watched@sandbox.test"
PASSWORD = "observed imap pw"


@dataclass
class Watched:
    """The sandbox world and a relay with its IMAP and admin listeners."""

    world: SandboxWorld
    relay: AppRelay

    @property
    def imap_port(self) -> int:
        return self.relay.imap_port

    def get(self, path: str) -> bytes:
        """One GET to the admin listener; the body (status 200 asserted)."""
        port = self.relay.app.admin_port
        assert port is not None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, (path, response.status, body)
        return body

    def imap_sessions(self, outcome: str) -> float:
        """xoauth2relay_sessions_total{protocol="imap", outcome=...} as /metrics reports it."""
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples:
                if (sample.name == "xoauth2relay_sessions_total" and sample.labels.get("protocol") == "imap"
                        and sample.labels.get("outcome") == outcome):
                    return sample.value
        return 0.0


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    """The sandbox world and a RelayApp (IMAP listener, admin listener on a free port) in front."""
    base = tmp_path_factory.mktemp("imap-observed")
    world = SandboxWorld.start(base / "world")
    relay = start_sandbox_imap_relay(world, base, name="w", username="wapp", password=PASSWORD,
                                     mailbox=MAILBOX, admin=AdminConfig(host="127.0.0.1", port=0))
    try:
        yield Watched(world, relay)
    finally:
        relay.stop(2)
        world.stop()


def test_a_good_imap_session_is_counted_ok(watched: Watched) -> None:
    """LOGIN, SELECT, LOGOUT through the relay: the IMAP `ok` session count goes up by one."""
    before = watched.imap_sessions("ok")
    client = imaplib.IMAP4("127.0.0.1", watched.imap_port, timeout=30)
    assert client.login("wapp", PASSWORD)[0] == "OK"
    client.select("INBOX")
    client.logout()
    wait_until(lambda: watched.imap_sessions("ok") == before + 1, what="the IMAP session counted ok")


def test_a_wrong_local_password_is_counted_auth_failed(watched: Watched) -> None:
    """A wrong local password: the client gets NO and the IMAP `auth_failed` count goes up by one."""
    before = watched.imap_sessions("auth_failed")
    client = imaplib.IMAP4("127.0.0.1", watched.imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        client.login("wapp", "not the password")
    client.logout()
    wait_until(lambda: watched.imap_sessions("auth_failed") == before + 1,
               what="the IMAP session counted auth_failed")


def test_refused_upstream_login_is_counted_and_named_in_status(watched: Watched) -> None:
    """The upstream refuses every token: the client gets NO, /metrics counts an IMAP
    `upstream_error` session, and /status names the account's last upstream error (no token in it)."""
    world = watched.world
    before = watched.imap_sessions("upstream_error")
    world.imap.authorize = lambda token, user: False
    try:
        client = imaplib.IMAP4("127.0.0.1", watched.imap_port, timeout=30)
        with pytest.raises(imaplib.IMAP4.error, match="CONTACTADMIN"):
            client.login("wapp", PASSWORD)
        client.logout()
    finally:
        world.imap.authorize = world.oauth.token_allows
    wait_until(lambda: watched.imap_sessions("upstream_error") == before + 1,
               what="the IMAP session counted upstream_error")
    status = json.loads(watched.get("/status"))
    account = status["accounts"]["w"]
    assert "refused the XOAUTH2 login" in account["last_upstream_error"], account
    assert account["last_upstream_error_at"], account

    async def current() -> str:
        return (await watched.relay.tokens.get_token("w")).reveal()

    assert watched.relay.thread.run(current()) not in json.dumps(status)

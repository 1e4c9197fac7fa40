"""Security: the `relay authorize` loopback redirect listener over real HTTP (RFC 8252).

tests/integration/oauth/ already covers the full flow, a forged state and that the listener is gone
after the flow; these add the bound address, wrong path / method / missing state, and the answer to
a second redirect while the first is being handled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from relay.authorize import Authorizer, RedirectListener
from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    ListenConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
)
from relay.errors import AuthorizeStateMismatch, AuthorizeTimeout
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SandboxOAuthProvider
from relay.secret import Secret
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

MAILBOX = "auth@sandbox.test"


@pytest.fixture
def oauth() -> Iterator[SandboxOAuthProvider]:
    """A running sandbox OAuth provider on 127.0.0.1."""
    with SandboxOAuthProvider() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> EncryptedFileStore:
    """An empty encrypted store."""
    return EncryptedFileStore(tmp_path / "store" / "tokens.enc", decode_key(generate_key(), "t")).open()


def make_config(oauth: SandboxOAuthProvider, tmp_path: Path) -> RelayConfig:
    """One account 'sales' whose generic credentials point at the sandbox."""
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=DEFAULT_CLIENT_ID,
                              client_secret=Secret(DEFAULT_CLIENT_SECRET), scopes=("mail", "offline_access"),
                              redirect_host="127.0.0.1", authorize_url=oauth.authorize_url,
                              token_url=oauth.token_url)
    account = AccountConfig(name="sales", username="sales", password_hash=None, mailbox=MAILBOX,
                            credentials="sandbox", smtp=None, pop3=None)
    off = ListenerConfig(enabled=False, host="127.0.0.1", port=0)
    return RelayConfig(listen=ListenConfig(off, off), token_store=TokenStoreConfig(path=tmp_path / "t.enc"),
                       credentials={"sandbox": creds}, accounts={"sales": account})


def refused(host: str, port: int) -> bool:
    """True when a TCP connection to host:port is refused."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_listener_binds_127_0_0_1_only():
    """The redirect listener's socket is bound to 127.0.0.1: another loopback address is refused."""
    listener = RedirectListener("state-x")
    await listener.start()
    try:
        sockets = [s for server in listener._servers for s in server.sockets]
        assert [s.getsockname()[0] for s in sockets] == ["127.0.0.1"]
        assert await asyncio.to_thread(refused, "127.0.0.2", listener.port)
    finally:
        await listener.close()


async def test_second_redirect_gets_410_and_first_code_wins():
    """A second redirect arriving before the flow picked up the code is answered 410 and changes
    nothing; once the code is taken the port is closed."""
    listener = RedirectListener("good-state")
    await listener.start()
    base = f"http://127.0.0.1:{listener.port}/"
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.get(base, params={"code": "first", "state": "good-state"})
        second = await client.get(base, params={"code": "second", "state": "good-state"})
    assert first.status_code == 200 and second.status_code == 410
    assert await listener.wait_for_code(5) == "first"
    assert await asyncio.to_thread(refused, "127.0.0.1", listener.port)


async def test_wrong_path_and_method_are_ignored_and_flow_completes(oauth, tmp_path, store):
    """GET on another path (404) and POST on the right one (405), even with the right state, are not
    accepted: the flow goes on, only the real redirect's code is exchanged, and the redirect port
    is not reachable on 127.0.0.2."""
    answers: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def browse(url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        redirect_uri, state = query["redirect_uri"][0], query["state"][0]
        port = urlsplit(redirect_uri).port
        assert port is not None and await asyncio.to_thread(refused, "127.0.0.2", port)
        async with httpx.AsyncClient(timeout=10) as client:
            forged = {"code": "forged", "state": state}
            wrong_path = await client.get(redirect_uri + "callback", params=forged)
            post = await client.post(redirect_uri, params=forged)
            answers.extend([wrong_path.status_code, post.status_code])
            real = await client.get(url, follow_redirects=True)
            answers.append(real.status_code)

    def open_url(url: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(browse(url)))

    tokens = await Authorizer(make_config(oauth, tmp_path), store, out=io.StringIO(),
                              open_url=open_url).run("sales", timeout_s=30)
    await tasks[0]
    assert answers == [404, 405, 200]
    assert oauth.counters.get("authorization_code_requests", 0) == 1
    stored = await store.get("sales")
    assert stored is not None and stored.access_token == tokens.access_token
    assert oauth.validate_access_token(stored.access_token.reveal()) == MAILBOX


@pytest.mark.parametrize("query", [{"code": "stolen"}, {"code": "stolen", "state": ""},
                                   {"code": "stolen", "state": "forged"}],
                         ids=["missing-state", "empty-state", "wrong-state"])
async def test_redirect_without_the_state_is_answered_400_and_stores_nothing(oauth, tmp_path, store, query):
    """A redirect whose state is missing, empty or wrong gets 400 and is ignored; when no right one
    follows, the flow ends with a state mismatch, exchanges no code, stores nothing, and the
    listener is then closed."""
    seen: dict[str, object] = {}
    tasks: list[asyncio.Task[None]] = []

    async def forge(url: str) -> None:
        redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        seen["redirect_uri"] = redirect_uri
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(redirect_uri, params=query)
        seen["status"], seen["body"] = answer.status_code, answer.text

    def open_url(url: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(forge(url)))

    with pytest.raises(AuthorizeStateMismatch):
        await Authorizer(make_config(oauth, tmp_path), store, out=io.StringIO(),
                         open_url=open_url).run("sales", timeout_s=1.5)
    await tasks[0]
    assert seen["status"] == 400 and "state" in str(seen["body"])
    assert oauth.counters.get("authorization_code_requests", 0) == 0
    assert await store.list_accounts() == []
    assert not store.path.exists()
    port = urlsplit(str(seen["redirect_uri"])).port
    assert port is not None and await asyncio.to_thread(refused, "127.0.0.1", port)


async def test_requests_without_the_state_get_400_and_the_flow_goes_on(oauth, tmp_path, store):
    """Issue 22 item 8: GET /, a cross-site ?error=access_denied and a forged code, all without this
    run's state, are answered 400 and do not end the sign-in: the real redirect that follows
    completes it, and only its code is exchanged."""
    answers: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def browse(url: str) -> None:
        redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        async with httpx.AsyncClient(timeout=10) as client:
            for params in ({}, {"error": "access_denied"}, {"code": "forged", "state": "wrong"},
                           {"error": "access_denied", "state": "stale-tab"}):
                answers.append((await client.get(redirect_uri, params=params)).status_code)
            answers.append((await client.get(url, follow_redirects=True)).status_code)

    def open_url(url: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(browse(url)))

    tokens = await Authorizer(make_config(oauth, tmp_path), store, out=io.StringIO(),
                              open_url=open_url).run("sales", timeout_s=30)
    await tasks[0]
    assert answers == [400, 400, 400, 400, 200]
    assert oauth.counters.get("authorization_code_requests", 0) == 1
    stored = await store.get("sales")
    assert stored is not None and stored.access_token == tokens.access_token


@pytest.mark.parametrize(("provider", "host"), [("generic", "127.0.0.1"), ("google", "127.0.0.1"),
                                                ("microsoft", "localhost")])
async def test_default_redirect_host_follows_rfc_8252(oauth, tmp_path, store, provider, host):
    """Issue 22 item 8: without redirect_host the redirect URI uses 127.0.0.1 (RFC 8252 8.3), except
    for Microsoft (127.0.0.1 only via the app manifest), whose localhost listener then also holds
    the port on [::1] so a browser resolving localhost to ::1 reaches this run, not another program."""
    config = make_config(oauth, tmp_path)
    creds = dataclasses.replace(config.credentials["sandbox"], redirect_host=None, provider=provider,
                                tenant_id="common" if provider == "microsoft" else None)
    config = dataclasses.replace(config, credentials={"sandbox": creds})
    seen: list[str] = []
    out = io.StringIO()
    with pytest.raises(AuthorizeTimeout):
        await Authorizer(config, store, out=out, open_url=seen.append).run("sales", timeout_s=0.3)
    redirect_uri = parse_qs(urlsplit(seen[0]).query)["redirect_uri"][0]
    assert urlsplit(redirect_uri).hostname == host


async def test_localhost_listener_holds_the_port_on_ipv6_loopback_too():
    """Issue 22 item 8: a localhost redirect listener binds 127.0.0.1 and [::1] on one port (when the
    host has IPv6 loopback), so no other program can take [::1]:PORT."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    listener = RedirectListener("s", redirect_host="localhost")
    await listener.start()
    try:
        hosts = sorted(s.getsockname()[0] for server in listener._servers for s in server.sockets)
        assert hosts == ["127.0.0.1", "::1"]
        assert {s.getsockname()[1] for server in listener._servers for s in server.sockets} == {listener.port}
    finally:
        await listener.close()

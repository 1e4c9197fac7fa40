"""The one-time authorize flows against the sandbox, with a test acting as the browser."""

from __future__ import annotations

import asyncio
import io
import logging
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from relay.authorize import Authorizer
from relay.errors import (
    AuthorizationNeeded,
    AuthorizeDenied,
    AuthorizeStateMismatch,
    AuthorizeTimeout,
    TokenRefreshFailed,
)
from relay.sandbox.oauth import DEFAULT_CLIENT_SECRET, SandboxOAuthProvider
from relay.tokens.manager import TokenManager

from .conftest import MAILBOX, FakeClock, make_config


def browser(tasks: list[asyncio.Task[httpx.Response]]):
    """An open_url callback that follows the authorize URL and its redirect like a browser."""
    async def follow(url: str) -> httpx.Response:
        async with httpx.AsyncClient(follow_redirects=True, timeout=10) as client:
            return await client.get(url)

    def open_url(url: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(follow(url)))
    return open_url


async def test_loopback_flow_stores_tokens_and_prints_no_token(sandbox, tmp_path, store):
    """Loopback + PKCE: the redirect reaches the listener, tokens are stored, output names no token."""
    out = io.StringIO()
    tasks: list[asyncio.Task[httpx.Response]] = []
    config = make_config(sandbox, tmp_path)
    tokens = await Authorizer(config, store, out=out, open_url=browser(tasks)).run("sales", timeout_s=30)
    page = await tasks[0]
    assert page.status_code == 200 and "Authorization complete" in page.text
    stored = await store.get("sales")
    assert stored is not None and stored.refresh_token == tokens.refresh_token
    assert sandbox.validate_access_token(stored.access_token.reveal()) == MAILBOX
    text = out.getvalue()
    assert "Authorized account 'sales'" in text and "valid until" in text
    assert stored.access_token.reveal() not in text and stored.refresh_token.reveal() not in text


async def test_loopback_listener_is_single_use(sandbox, tmp_path, store):
    """After the code arrived the listener is closed: a second request to it is refused."""
    tasks: list[asyncio.Task[httpx.Response]] = []
    config = make_config(sandbox, tmp_path)
    urls: list[str] = []
    opener = browser(tasks)

    def open_url(url: str) -> None:
        urls.append(url)
        opener(url)
    await Authorizer(config, store, out=io.StringIO(), open_url=open_url).run("sales", timeout_s=30)
    redirect_uri = parse_qs(urlsplit(urls[0]).query)["redirect_uri"][0]
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(redirect_uri + "?code=x&state=y")


async def test_denied_consent_stores_nothing(sandbox, tmp_path, store):
    """access_denied on the redirect ends with AuthorizeDenied (exit 8) and an empty store."""
    sandbox.deny_consent = True
    tasks: list[asyncio.Task[httpx.Response]] = []
    config = make_config(sandbox, tmp_path)
    with pytest.raises(AuthorizeDenied) as info:
        await Authorizer(config, store, out=io.StringIO(), open_url=browser(tasks)).run("sales", timeout_s=30)
    assert info.value.exit_code == 8
    assert await store.list_accounts() == []


async def test_state_mismatch_is_refused(sandbox, tmp_path, store):
    """A redirect with a different state ends with AuthorizeStateMismatch (exit 9) and stores nothing."""
    config = make_config(sandbox, tmp_path)

    def forged(url: str) -> None:
        redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]

        async def go() -> None:
            async with httpx.AsyncClient() as client:
                await client.get(redirect_uri + "?code=stolen&state=forged")
        asyncio.get_running_loop().create_task(go())
    with pytest.raises(AuthorizeStateMismatch) as info:
        await Authorizer(config, store, out=io.StringIO(), open_url=forged).run("sales", timeout_s=1.5)
    assert info.value.exit_code == 9
    assert await store.list_accounts() == []
    assert sandbox.counters.get("authorization_code_requests", 0) == 0


async def test_loopback_timeout(sandbox, tmp_path, store):
    """Nobody signs in: AuthorizeTimeout (exit 7) after the timeout, nothing stored."""
    config = make_config(sandbox, tmp_path)
    with pytest.raises(AuthorizeTimeout) as info:
        await Authorizer(config, store, out=io.StringIO(), open_url=lambda url: None).run(
            "sales", timeout_s=0.2)
    assert info.value.exit_code == 7
    assert await store.list_accounts() == []


async def test_manual_flow_reads_pasted_url(sandbox, tmp_path, store):
    """--manual prints the URL; the pasted redirected URL (with code and state) completes the flow."""
    out = io.StringIO()
    config = make_config(sandbox, tmp_path)

    async def paste() -> str:
        url = next(line.strip() for line in out.getvalue().splitlines() if "/authorize?" in line)
        async with httpx.AsyncClient() as client:
            answer = await client.get(url)  # the browser would now fail to load the localhost page
        return answer.headers["location"] + "\n"

    await Authorizer(config, store, out=out, read_line=paste).run("sales", mode="manual", timeout_s=30)
    stored = await store.get("sales")
    assert stored is not None and sandbox.validate_access_token(stored.access_token.reveal()) == MAILBOX


async def test_manual_flow_rejects_wrong_state(sandbox, tmp_path, store):
    """A pasted URL from another run (different state) is refused."""
    config = make_config(sandbox, tmp_path)

    async def paste() -> str:
        return "http://127.0.0.1/?code=abc&state=other"

    with pytest.raises(AuthorizeStateMismatch):
        await Authorizer(config, store, out=io.StringIO(), read_line=paste).run("sales", mode="manual")


async def test_device_flow_with_approval_and_slow_down(tmp_path, store):
    """--device prints the user code, polls, honours slow_down (+5 s) and stores tokens once approved."""
    clock = FakeClock()
    with SandboxOAuthProvider(clock=lambda: clock().timestamp()) as sandbox:
        sandbox.set_device_interval(1)
        out = io.StringIO()
        waits: list[float] = []
        config = make_config(sandbox, tmp_path)

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 2:
                return  # poll too early once: the provider answers slow_down
            clock.advance(seconds)
            if len(waits) == 3:
                code = next(w for w in out.getvalue().split() if "-" in w and w.isupper())
                assert sandbox.approve_device(code, MAILBOX)

        tokens = await Authorizer(config, store, out=out, clock=clock, sleep=sleep).run(
            "sales", mode="device", timeout_s=600)
        assert "enter the code" in out.getvalue()
        assert waits == [1, 1, 6]
        assert sandbox.validate_access_token(tokens.access_token.reveal()) == MAILBOX
        assert (await store.get("sales")) is not None


async def test_device_flow_denied(sandbox, tmp_path, store):
    """A denied device authorization ends with AuthorizeDenied and stores nothing."""
    out = io.StringIO()
    config = make_config(sandbox, tmp_path)

    async def sleep(seconds: float) -> None:
        code = next(w for w in out.getvalue().split() if "-" in w and w.isupper())
        sandbox.deny_device(code)

    with pytest.raises(AuthorizeDenied):
        await Authorizer(config, store, out=out, sleep=sleep).run("sales", mode="device")
    assert await store.list_accounts() == []


async def test_device_endpoint_answering_non_json_is_a_relay_error(sandbox, tmp_path, store):
    """A device authorization endpoint answering 200 with a body that is not JSON gives a RelayError naming
    the credentials (it escaped the exception tree as AttributeError before), and stores nothing."""
    sandbox.invalid_json_next()
    config = make_config(sandbox, tmp_path)
    with pytest.raises(TokenRefreshFailed, match=r"credentials '\w+': the device authorization answer lacks"):
        await Authorizer(config, store, out=io.StringIO()).run("sales", mode="device")
    assert sandbox.counters["device_authorization_requests"] == 1
    assert await store.list_accounts() == []


async def test_device_flow_times_out(sandbox, tmp_path, store):
    """Nobody approves: the device flow ends with AuthorizeTimeout at the timeout, with progress output."""
    sandbox.set_device_interval(1)
    out = io.StringIO()
    clock = FakeClock()
    config = make_config(sandbox, tmp_path)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds + 20)  # the provider sees fast polls; our clock runs ahead

    with pytest.raises(AuthorizeTimeout):
        await Authorizer(config, store, out=out, clock=clock, sleep=sleep).run(
            "sales", mode="device", timeout_s=90)
    assert "still waiting" in out.getvalue()
    assert await store.list_accounts() == []


async def test_full_authorize_and_refresh_never_logs_a_secret(sandbox, tmp_path, store, caplog):
    """Authorize + refresh with DEBUG logging: no token, refresh token or client secret in logs or output."""
    sandbox.rotate_refresh_tokens = True
    out = io.StringIO()
    tasks: list[asyncio.Task[httpx.Response]] = []
    config = make_config(sandbox, tmp_path)
    clock = FakeClock()
    with caplog.at_level(logging.DEBUG):
        first = await Authorizer(config, store, out=out, open_url=browser(tasks)).run("sales", timeout_s=30)
        manager = TokenManager(config, store, clock=clock)
        try:
            second = await manager.force_refresh("sales")
            sandbox.force_invalid_grant = True
            clock.advance(7200)
            with pytest.raises(AuthorizationNeeded) as failure:
                await manager.get_token("sales")
        finally:
            await manager.close()
    stored = await store.get("sales")
    assert stored is not None
    secrets = {first.access_token.reveal(), first.refresh_token.reveal(), second.reveal(),
               stored.refresh_token.reveal(), DEFAULT_CLIENT_SECRET}
    texts = [r.getMessage() for r in caplog.records] + [out.getvalue(), str(failure.value)]
    for text in texts:
        for secret in secrets:
            assert secret not in text

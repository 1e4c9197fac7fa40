"""OAuth token requests through a real tinyproxy on loopback: the per-credentials `proxy:` setting
(with proxy authentication from ${file:}), HTTPS_PROXY / NO_PROXY, and a refusing proxy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from provider_helpers import ProviderSetup, run_relay
from tinyproxy_server import Tinyproxy, start_tinyproxy

from relay.sandbox.loop import LoopThread
from relay.sandbox.oauth import DEFAULT_CLIENT_SECRET, SandboxOAuthProvider
from relay.tlsutil import server_context

PROXY_USER, PROXY_PASSWORD = "relayproxy", "pr0xy-Secret-9"


@pytest.fixture
def https_oauth(ms: ProviderSetup) -> Iterator[SandboxOAuthProvider]:
    """The sandbox OAuth provider over HTTPS (like the real ones: the proxy sees a CONNECT)."""
    loop = LoopThread("oauth-tls").start()
    world = ms.world
    provider = SandboxOAuthProvider(ssl_context=server_context(world.cert_file, world.key_file, "oauth"))
    provider.start(loop)
    ms.credentials.update({"token_url": provider.token_url, "authorize_url": provider.authorize_url,
                           "client_secret": DEFAULT_CLIENT_SECRET})
    for service in ("smtp", "pop3", "imap"):  # check = the token request only
        ms.accounts["ops"][service] = False
    yield provider
    provider.stop()
    loop.stop()


def _env(ms: ProviderSetup, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY",
                                                                    "NO_PROXY")}
    return {**env, "SSL_CERT_FILE": str(ms.world.ca_file), **extra}


def _check(ms: ProviderSetup, **env: str) -> tuple[int, str]:
    """`relay check` with an empty token store, so the app token is requested (not read from the store)."""
    (ms.dir / "tokens.enc").unlink(missing_ok=True)
    result = run_relay("check", "-c", str(ms.write()), "--timeout", "10", env=_env(ms, **env))
    return result.returncode, result.stdout + result.stderr


def _connects(proxy: Tinyproxy, oauth: SandboxOAuthProvider) -> bool:
    return f"CONNECT 127.0.0.1:{oauth.port}" in proxy.log()


def test_proxy_setting_sends_the_token_request_through_the_proxy(  # type: ignore[no-untyped-def]
        ms: ProviderSetup, https_oauth, tmp_path: Path) -> None:
    """credentials.ms.proxy: the token request goes through tinyproxy (its log shows the CONNECT)."""
    proxy = start_tinyproxy(tmp_path / "proxy")
    try:
        ms.credentials["proxy"] = {"url": proxy.url}
        code, out = _check(ms)
        assert code == 0, out
        assert _connects(proxy, https_oauth), proxy.log()
        assert https_oauth.counters.get("tokens_issued", 0) >= 1
    finally:
        proxy.stop()


def test_proxy_authentication_with_password_from_a_file(ms: ProviderSetup, https_oauth, tmp_path: Path,
                                                        ) -> None:  # type: ignore[no-untyped-def]
    """A proxy requiring Basic auth: works with username + ${file:} password; the password never shows."""
    proxy = start_tinyproxy(tmp_path / "proxy", basic_auth=(PROXY_USER, PROXY_PASSWORD))
    secret_file = tmp_path / "proxy-password"
    secret_file.write_text(PROXY_PASSWORD + "\n")
    try:
        ms.credentials["proxy"] = {"url": proxy.url, "username": PROXY_USER,
                                   "password": "${file:" + str(secret_file) + "}"}
        code, out = _check(ms)
        assert code == 0, out
        assert _connects(proxy, https_oauth)
        assert PROXY_PASSWORD not in out
        ms.credentials["proxy"] = {"url": proxy.url}  # no credentials: 407
        code, out = _check(ms)
        assert code == 1
        assert "407" in out and "credentials.ms.proxy" in out
    finally:
        proxy.stop()


def test_refusing_proxy_names_the_setting(ms: ProviderSetup, https_oauth, tmp_path: Path,
                                          ) -> None:  # type: ignore[no-untyped-def]
    """A proxy that denies this client: a clear error naming credentials.ms.proxy, no token issued."""
    proxy = start_tinyproxy(tmp_path / "proxy", allow="192.0.2.1")  # not us: 403 Access denied
    try:
        ms.credentials["proxy"] = {"url": proxy.url}
        code, out = _check(ms)
        assert code == 1
        assert f"proxy {proxy.url} refused the OAuth request (403" in out
        assert "check credentials.ms.proxy" in out
        assert https_oauth.counters.get("tokens_issued", 0) == 0
    finally:
        proxy.stop()


def test_https_proxy_environment_and_no_proxy(ms: ProviderSetup, https_oauth, tmp_path: Path,
                                              ) -> None:  # type: ignore[no-untyped-def]
    """Without a setting, HTTPS_PROXY is honoured; NO_PROXY for the host bypasses it."""
    proxy = start_tinyproxy(tmp_path / "proxy")
    try:
        code, out = _check(ms, HTTPS_PROXY=proxy.url)
        assert code == 0, out
        assert _connects(proxy, https_oauth)
        before = proxy.log().count("CONNECT 127.0.0.1")
        issued = https_oauth.counters.get("tokens_issued", 0)
        code, out = _check(ms, HTTPS_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        assert code == 0, out
        assert https_oauth.counters.get("tokens_issued", 0) == issued + 1  # a new token, directly
        assert proxy.log().count("CONNECT 127.0.0.1") == before
    finally:
        proxy.stop()


def test_refusing_environment_proxy_names_the_variables(ms: ProviderSetup, https_oauth, tmp_path: Path,
                                                        ) -> None:  # type: ignore[no-untyped-def]
    """A refusing proxy from HTTPS_PROXY: the error names HTTPS_PROXY / NO_PROXY."""
    proxy = start_tinyproxy(tmp_path / "proxy", allow="192.0.2.1")
    try:
        code, out = _check(ms, HTTPS_PROXY=proxy.url)
        assert code == 1 and "HTTPS_PROXY / NO_PROXY" in out
    finally:
        proxy.stop()

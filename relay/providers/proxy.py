"""Corporate proxies for OAuth requests (token, device authorization, revocation).

Without a setting, the shared HTTP client honours ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``
from the environment (httpx's ``trust_env``). A credentials entry's ``proxy:`` setting sends that
entry's requests through the given proxy (HTTP CONNECT for https), optionally with Basic proxy
authentication whose password comes from ``${file:...}``. A proxy that refuses (403, 407, no
route) becomes an error naming the setting to fix; the password never appears in it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from relay.config.model import CredentialsConfig, ProxyConfig
from relay.errors import OAuthError

if TYPE_CHECKING:
    import httpx


class ProxyRefused(OAuthError):
    """The HTTP proxy refused the OAuth request (access denied, authentication required ...)."""

    exit_code = 2


def proxied_client(proxy: ProxyConfig, like: httpx.AsyncClient) -> httpx.AsyncClient:
    """A short-lived client sending everything through ``proxy`` (same timeout as ``like``)."""
    import httpx  # noqa: PLC0415 - imported with the first token request, see relay.providers.base

    auth = (proxy.username, proxy.password.reveal() if proxy.password else "") if proxy.username else None
    return httpx.AsyncClient(proxy=httpx.Proxy(proxy.url, auth=auth), timeout=like.timeout,
                             follow_redirects=False)


def proxy_refused(exc: Exception, credentials: CredentialsConfig, who: str,
                  account: str | None) -> ProxyRefused:
    """The error for a proxy failure, naming ``credentials.NAME.proxy`` or the environment."""
    reason = _reason(str(exc))
    if credentials.proxy is not None:
        where = f"proxy {_host(credentials.proxy.url)}"
        fix = (f"check credentials.{credentials.name}.proxy (url, username, password) and that the proxy "
               "allows this machine to reach the provider's login host")
    else:
        where = "the proxy from HTTPS_PROXY/HTTP_PROXY"
        fix = ("check the HTTPS_PROXY / NO_PROXY environment variables, or set "
               f"credentials.{credentials.name}.proxy")
    if "407" in reason:
        fix = ("the proxy needs authentication: set username and password in "
               f"credentials.{credentials.name}.proxy")
    return ProxyRefused(f"{who}: {where} refused the OAuth request ({reason}); {fix}", account=account)


def _reason(text: str) -> str:
    """The proxy's status line without anything that could carry credentials."""
    text = text.strip().splitlines()[0] if text.strip() else "connection failed"
    return text if "@" not in text else "proxy error"


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else f"{parts.scheme}://{parts.hostname}"

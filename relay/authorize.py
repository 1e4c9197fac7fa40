"""The one-time authorize flows that give an account its first refresh token.

- loopback (default): authorization code + PKCE S256 + state, with a single-use HTTP listener on
  127.0.0.1 receiving the redirect (RFC 8252; redirect URI http://127.0.0.1:PORT/, or
  http://localhost:PORT/ for Microsoft, then also bound on [::1]); the browser is opened when one
  is available. Requests without this run's state are answered 400 and do not end the wait.
- manual: the same URL; the operator pastes the redirected URL (for machines without a browser).
- device: RFC 8628 device grant; the operator enters a user code on another device.

Each failure ends in a distinct AuthorizeFlowError subclass (timeout, denied, state mismatch,
provider error) and stores nothing. Tokens are never printed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import sys
import webbrowser
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal, TextIO
from urllib.parse import parse_qsl, urlsplit

import httpx

from relay.config.model import AccountConfig, RelayConfig
from relay.errors import (
    AuthorizeFlowError,
    AuthorizeTimeout,
    ConfigError,
    OAuthError,
    TokenRefreshFailed,
)
from relay.providers.base import DevicePending, OAuthProvider, TokenResponse
from relay.providers.registry import load_provider_class
from relay.redirect_listener import (  # noqa: F401 - RedirectListener and helpers are public here too
    LISTEN_HOST,
    REDIRECT_PATH,
    RedirectListener,
    code_from_redirect,
    default_redirect_host,
    state_matches,
)
from relay.tokens.manager import new_http_client
from relay.tokens.model import TokenSet, expiry_from
from relay.tokens.status import ON_DEMAND_FLOWS
from relay.tokens.store import TokenStore

Mode = Literal["loopback", "manual", "device"]
Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
ReadLine = Callable[[], Awaitable[str]]

PROGRESS_EVERY_S = 30.0


def new_pkce() -> tuple[str, str]:
    """Return (code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(64)  # 86 chars of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    """Return an unguessable state value (RFC 6749 10.12)."""
    return secrets.token_urlsafe(24)


def browser_available() -> bool:
    """True when a browser can probably be opened (never required)."""
    if os.environ.get("BROWSER"):
        return True
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not display:
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


async def _stdin_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


class Authorizer:
    """Runs one authorize flow for one account and stores the resulting TokenSet."""

    def __init__(self, config: RelayConfig, store: TokenStore, *, out: TextIO | None = None,
                 http: httpx.AsyncClient | None = None, clock: Clock | None = None,
                 sleep: Sleep | None = None, read_line: ReadLine | None = None,
                 open_url: Callable[[str], object] | None = None) -> None:
        self.config = config
        self.store = store
        self.out = out or sys.stdout
        self._http = http
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep or asyncio.sleep
        self._read_line = read_line or _stdin_line
        self._open_url = open_url

    async def run(self, account_name: str, *, mode: Mode | None = None, timeout_s: float = 300.0,
                  open_browser: bool = True) -> TokenSet:
        """Run the flow (``mode`` None: the credentials' flow decides) and store the tokens."""
        try:
            acc = self.config.accounts[account_name]
        except KeyError:
            known = ", ".join(sorted(self.config.accounts)) or "none"
            raise ConfigError(f"accounts.{account_name}", f"no account '{account_name}' in the "
                              f"configuration (accounts: {known})") from None
        creds = self.config.credentials_for(acc)
        provider = load_provider_class(creds.provider)(creds)
        http = self._http or new_http_client()
        try:
            response = await self._obtain(provider, acc, http, mode, timeout_s=timeout_s,
                                          open_browser=open_browser)
        finally:
            if self._http is None:
                await http.aclose()
        return await self._store(acc, provider, response)

    async def _obtain(self, provider: OAuthProvider, acc: AccountConfig, http: httpx.AsyncClient,
                      mode: Mode | None, *, timeout_s: float, open_browser: bool) -> TokenResponse:
        flow = provider.credentials.flow
        if flow in ON_DEMAND_FLOWS:
            self._say(f"Account '{acc.name}' uses flow {flow}: no sign-in is needed, tokens are fetched on "
                      "demand. Fetching one now to check the setup.")
            return await provider.fetch_app_token(http, acc.mailbox, account=acc.name)
        if mode is None:
            mode = "device" if flow == "device_code" else "loopback"
        if mode == "device":
            return await self._device(provider, acc, http, timeout_s)
        return await self._code(provider, acc, http, mode, timeout_s=timeout_s, open_browser=open_browser)

    async def _code(self, provider: OAuthProvider, acc: AccountConfig, http: httpx.AsyncClient,
                    mode: Mode, *, timeout_s: float, open_browser: bool) -> TokenResponse:
        creds = provider.credentials
        verifier, challenge = new_pkce()
        state = new_state()
        redirect_host = creds.redirect_host or default_redirect_host(creds.provider)
        if mode == "manual":
            port = f":{creds.redirect_port}" if creds.redirect_port else ""
            redirect_uri = f"http://{redirect_host}{port}{REDIRECT_PATH}"
            url = provider.authorization_url(redirect_uri, state, challenge, login_hint=acc.mailbox)
            self._say(f"Open this URL in a browser and sign in as {acc.mailbox}:\n\n  {url}\n\n"
                      "The browser then tries to load a localhost page that fails to open; that is "
                      "expected. Copy the full address from the browser's address bar and paste it here:")
            try:
                line = await asyncio.wait_for(self._read_line(), timeout_s)
            except TimeoutError:
                raise AuthorizeTimeout(f"nothing was pasted within {timeout_s:.0f} s; "
                                       "nothing was stored") from None
            if not line.strip():
                raise AuthorizeFlowError("nothing was pasted (standard input is empty or closed); run "
                                         "`relay authorize --manual` in a terminal, or use --device",
                                         account=acc.name)
            code = code_from_redirect(_params_of_pasted(line), state)
        else:
            listener = RedirectListener(state, port=creds.redirect_port, redirect_host=redirect_host)
            await listener.start()
            try:
                url = provider.authorization_url(listener.redirect_uri, state, challenge,
                                                 login_hint=acc.mailbox)
            except BaseException:
                await listener.close()
                raise
            redirect_uri = listener.redirect_uri
            self._say(f"Sign in as {acc.mailbox} to authorize account '{acc.name}'. Open this URL:\n\n"
                      f"  {url}\n\nWaiting up to {timeout_s:.0f} s for the redirect to {redirect_uri} ...")
            if open_browser:
                self._browse(url)
            code = await listener.wait_for_code(timeout_s)
        try:
            return await provider.exchange_code(http, code, redirect_uri, verifier, account=acc.name)
        except (AuthorizeFlowError, TokenRefreshFailed):
            raise
        except OAuthError as exc:
            raise AuthorizeFlowError(f"the provider did not issue tokens for the code: {exc}",
                                     account=acc.name, provider_error=exc.provider_error) from None

    async def _device(self, provider: OAuthProvider, acc: AccountConfig, http: httpx.AsyncClient,
                      timeout_s: float) -> TokenResponse:
        device = await provider.start_device_authorization(http, account=acc.name)
        where = device.verification_uri_complete or device.verification_uri
        self._say(f"To authorize account '{acc.name}', open {device.verification_uri} on any device, "
                  f"enter the code {device.user_code} and sign in as {acc.mailbox}."
                  + (f"\n(or open {where})" if where != device.verification_uri else ""))
        start = self._clock()
        limit_s = min(timeout_s, float(device.expires_in_s))
        interval_s = float(device.interval_s)
        next_progress_s = PROGRESS_EVERY_S
        while True:
            elapsed_s = (self._clock() - start).total_seconds()
            if elapsed_s + interval_s > limit_s:
                raise AuthorizeTimeout(f"the sign-in was not completed within {limit_s:.0f} s; nothing was "
                                       "stored (run the command again)", account=acc.name)
            await self._sleep(interval_s)
            result = await provider.poll_device_token(http, device, account=acc.name)
            if not isinstance(result, DevicePending):
                return result
            if result.slow_down:
                interval_s += 5
            elapsed_s = (self._clock() - start).total_seconds()
            if elapsed_s >= next_progress_s:
                self._say(f"... still waiting for the sign-in ({limit_s - elapsed_s:.0f} s left)")
                next_progress_s = elapsed_s + PROGRESS_EVERY_S

    async def _store(self, acc: AccountConfig, provider: OAuthProvider, response: TokenResponse) -> TokenSet:
        now = self._clock()
        if response.refresh_token is None and provider.needs_authorize_step():
            self._say("Warning: the provider issued no refresh token; the relay cannot renew this access "
                      "token. Check that the scopes include offline access (Microsoft: offline_access; "
                      "Google: access_type=offline).")
        tokens = TokenSet(account=acc.name, credentials=acc.credentials, access_token=response.access_token,
                          expires_at=expiry_from(now, response.expires_in_s),
                          refresh_token=response.refresh_token,
                          scopes=tuple(response.scope.split()) if response.scope else provider.scopes(),
                          obtained_at=now)
        await self.store.put(tokens)
        kept = "; refresh token stored" if tokens.refresh_token else ""
        self._say(f"Authorized account '{acc.name}' ({acc.mailbox}, credentials '{acc.credentials}'). "
                  f"Access token valid until {tokens.expires_at.isoformat(timespec='seconds')}{kept}.")
        return tokens

    def _browse(self, url: str) -> None:
        if self._open_url is not None:
            self._open_url(url)
            return
        if not browser_available():
            return
        with contextlib.suppress(webbrowser.Error, OSError):
            webbrowser.open(url, new=1)

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _params_of_pasted(line: str) -> dict[str, str]:
    """Parse a pasted redirect URL (or just its query string) into parameters."""
    text = line.strip()
    query = urlsplit(text).query if "?" in text else text
    return dict(parse_qsl(query))

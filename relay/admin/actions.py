"""What the admin page's buttons do: authorize (code + PKCE, or device code), send a test, revoke.

Authorization-code sign-ins redirect back to the admin listener's ``/callback``; each pending
``state`` is single use, expires after ``PENDING_TTL_S`` and is compared in constant time. A device
code sign-in is polled in the background and its code shown on the page until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relay.authorize import new_pkce, new_state
from relay.errors import OAuthError, RelayError
from relay.providers.base import DevicePending, OAuthProvider, TokenResponse
from relay.redirect_listener import code_from_redirect
from relay.sendmail import AlertDeliveryError, send_upstream_message
from relay.tokens.manager import new_http_client
from relay.tokens.model import TokenSet, expiry_from

if TYPE_CHECKING:
    from relay.admin.report import RelayView
    from relay.config.model import AccountConfig

log = logging.getLogger("relay.admin")

PENDING_TTL_S = 600.0
MAX_PENDING = 32
CALLBACK_PATH = "/callback"


class ActionError(RelayError):
    """An admin page action failed; the message is shown on the page (never a secret)."""


@dataclass
class PendingSignIn:
    """An authorization-code sign-in waiting for its redirect."""

    account: str
    verifier: str
    redirect_uri: str
    expires: float


@dataclass
class DeviceSignIn:
    """A device-code sign-in in progress (shown on the page)."""

    account: str
    user_code: str
    verification_uri: str
    expires_at: float
    task: asyncio.Task[None] | None = None
    result: str | None = None


@dataclass
class AdminActions:
    """The state-changing operations behind the page's buttons."""

    view: RelayView
    pending: dict[str, PendingSignIn] = field(default_factory=dict)
    devices: dict[str, DeviceSignIn] = field(default_factory=dict)

    def _account(self, name: str) -> AccountConfig:
        account = self.view.config.accounts.get(name)
        if account is None:
            raise ActionError("no such account")
        return account

    def _provider(self, account: AccountConfig) -> OAuthProvider:
        return self.view.tokens.provider_for(account)

    # --- authorize ------------------------------------------------------------------------------

    async def start_authorize(self, name: str, base_url: str) -> str | None:
        """Begin a sign-in: the provider URL to redirect to (code flow) or None (device code, shown)."""
        account = self._account(name)
        provider = self._provider(account)
        flow = provider.credentials.flow
        if flow in ("client_credentials", "service_account"):
            raise ActionError(f"account {name} uses {flow}: tokens are fetched on demand, "
                              "nothing to authorize")
        if flow == "device_code":
            await self._start_device(account, provider)
            return None
        now = time.monotonic()
        self.pending = {k: p for k, p in self.pending.items() if p.expires > now}
        while len(self.pending) >= MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
        verifier, challenge = new_pkce()
        state = new_state()
        redirect_uri = base_url + CALLBACK_PATH
        self.pending[state] = PendingSignIn(name, verifier, redirect_uri, now + PENDING_TTL_S)
        return provider.authorization_url(redirect_uri, state, challenge, login_hint=account.mailbox)

    async def finish_authorize(self, params: dict[str, str]) -> str:
        """Handle the redirect: check the single-use state, trade the code, store the tokens."""
        state = params.get("state", "")
        pending = self.pending.pop(state, None) if state else None
        if pending is None or pending.expires <= time.monotonic():
            raise ActionError("this sign-in link is unknown, already used or expired; start again from "
                              "the page")
        account = self._account(pending.account)
        code = code_from_redirect(params, state)
        provider = self._provider(account)
        async with new_http_client() as http:
            try:
                response = await provider.exchange_code(http, code, pending.redirect_uri, pending.verifier,
                                                        account=account.name)
            except OAuthError as exc:
                raise ActionError(f"the provider did not issue tokens: {exc}") from None
        tokens = await self._store(account, provider, response)
        until = tokens.expires_at.isoformat(timespec="seconds")
        return f"Authorized {account.name}: token valid until {until}"

    async def _start_device(self, account: AccountConfig, provider: OAuthProvider) -> None:
        old = self.devices.pop(account.name, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        async with new_http_client() as http:
            device = await provider.start_device_authorization(http, account=account.name)
        sign_in = DeviceSignIn(account.name, device.user_code,
                               device.verification_uri_complete or device.verification_uri,
                               time.time() + device.expires_in_s)
        self.devices[account.name] = sign_in

        async def poll() -> None:
            interval_s = float(device.interval_s)
            async with new_http_client() as http:
                while time.time() < sign_in.expires_at:
                    await asyncio.sleep(interval_s)
                    try:
                        result = await provider.poll_device_token(http, device, account=account.name)
                    except OAuthError as exc:
                        sign_in.result = f"sign-in failed: {exc}"
                        return
                    if isinstance(result, DevicePending):
                        interval_s += 5 if result.slow_down else 0
                        continue
                    await self._store(account, provider, result)
                    sign_in.result = "authorized"
                    return
            sign_in.result = "the code expired; start again"

        sign_in.task = asyncio.get_running_loop().create_task(poll(), name=f"device-{account.name}")

    async def _store(self, account: AccountConfig, provider: OAuthProvider,
                     response: TokenResponse) -> TokenSet:
        now = datetime.now(UTC)
        tokens = TokenSet(account=account.name, credentials=account.credentials,
                          access_token=response.access_token,
                          expires_at=expiry_from(now, response.expires_in_s),
                          refresh_token=response.refresh_token,
                          scopes=tuple(response.scope.split()) if response.scope else provider.scopes(),
                          obtained_at=now)
        await self.view.tokens.store.put(tokens)
        log.info("admin page: account %s authorized, token valid until %s", account.name,
                 tokens.expires_at.isoformat(timespec="seconds"), extra={"account": account.name,
                                                                          "outcome": "authorized"})
        return tokens

    # --- test message and revoke ----------------------------------------------------------------

    async def send_test(self, name: str, recipient: str) -> str:
        """Send a short test message upstream as the account (its own token); the upstream's reply."""
        account = self._account(name)
        if account.smtp is None:
            raise ActionError(f"account {name} has no smtp upstream")
        try:
            reply = await send_upstream_message(self.view.config, self.view.tokens, account, (recipient,),
                                                "xoauth2-relay test message",
                                                "This test message was sent from the xoauth2-relay "
                                                "admin page.\n")
        except AlertDeliveryError as exc:
            raise ActionError(str(exc)) from None
        return f"Sent to {recipient}: the upstream answered {reply}"

    async def revoke(self, name: str) -> str:
        """Revoke at the provider (best effort) and forget the stored tokens."""
        account = self._account(name)
        store = self.view.tokens.store
        tokens = await store.get(account.name)
        revoked = False
        if tokens is not None:
            with contextlib.suppress(OAuthError, OSError):
                async with new_http_client() as http:
                    token = tokens.refresh_token or tokens.access_token
                    revoked = await self._provider(account).revoke(http, token)
        await store.delete(account.name)
        self.view.tokens.forget(account.name)
        log.info("admin page: tokens of account %s forgotten (revoked at the provider: %s)", account.name,
                 revoked, extra={"account": account.name, "outcome": "revoked"})
        return f"Forgot the tokens of {name}" + (" and revoked them at the provider" if revoked else "")

"""Access tokens for another resource (Microsoft Graph) from an account's one grant.

The account's stored `TokenSet` holds the refresh token and the SMTP/POP3 access token; a Graph
token is asked for with the same refresh token (or, app-only, the same client credentials) and
the Graph scopes, and cached in memory per (account, resource): an access token lives an hour,
so after a restart one request gets a new one. A refresh token rotated by that request replaces
the stored one (the old one may be revoked already).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from relay.config.model import AccountConfig
from relay.errors import AuthorizationNeeded, ConfigError, TokenRefreshFailed
from relay.providers.base import OAuthProvider, TokenResponse
from relay.secret import Secret
from relay.tokens.interface import Lease, LocalLease, TokenStore
from relay.tokens.model import TokenSet, expiry_from
from relay.tokens.source import GRAPH
from relay.tokens.status import ON_DEMAND_FLOWS

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("relay.tokens")
LEASE_RETRY_S = 0.2  # as the manager's: poll for another holder's write when the store cannot watch


class GrantHolder(Protocol):
    """What resource token requests use of their TokenManager: its clock, provider, HTTP client,
    retries, and its store lease and compare-and-set save (so this module does not import it)."""

    store: TokenStore
    _clock: Callable[[], datetime]
    _lease_ttl_s: float

    def provider_for(self, account: AccountConfig) -> OAuthProvider: ...

    def _margin_s(self) -> float: ...

    def _flow(self, acc: AccountConfig) -> str: ...

    def _client(self) -> httpx.AsyncClient: ...

    async def _with_retries(self, call: Callable[[], Awaitable[TokenResponse]]) -> TokenResponse: ...

    async def _versioned(self, name: str, *, fresh: bool) -> tuple[TokenSet | None, int | None]: ...

    async def _lease(self, name: str) -> Lease | None: ...

    async def _save(self, name: str, fresh: TokenSet, version: int | None) -> TokenSet: ...


def resource_scopes(provider: OAuthProvider, account: AccountConfig, resource: str) -> tuple[str, ...]:
    """The scopes of ``resource``'s token for this account (ConfigError naming the setting)."""
    if resource != GRAPH:
        raise ConfigError(f"accounts.{account.name}", f"unknown token resource '{resource}'")
    scopes = provider.graph_scopes()
    if not scopes:
        raise ConfigError(f"credentials.{account.credentials}.graph_scopes",
                          f"account '{account.name}' uses Microsoft Graph but credentials "
                          f"'{account.credentials}' define no Graph scopes; list them in graph_scopes")
    return scopes


@dataclass
class ResourceTokens:
    """Per-resource access tokens of a `TokenManager`: the in-memory cache, single flight, the
    per-account grant lock, and the token requests themselves (through the manager's store
    lease and compare-and-set save, like its own refreshes)."""

    tokens: dict[tuple[str, str], tuple[Secret, datetime]] = field(default_factory=dict)
    inflight: dict[tuple[str, str], asyncio.Task[Secret]] = field(default_factory=dict)
    grant_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def usable(self, key: tuple[str, str], now: datetime, margin_s: float,
               rejected: Secret | None = None) -> Secret | None:
        """The cached token if valid for ``margin_s`` more seconds and not the rejected one."""
        cached = self.tokens.get(key)
        if cached is None:
            return None
        token, expires_at = cached
        if (expires_at - now).total_seconds() <= margin_s:
            return None
        if rejected is not None and token == rejected:
            return None
        return token

    def keep(self, key: tuple[str, str], response: TokenResponse, now: datetime) -> Secret:
        """Cache the token of a fresh response; return it."""
        self.tokens[key] = (response.access_token, expiry_from(now, response.expires_in_s))
        return response.access_token

    def grant_lock(self, account: str) -> asyncio.Lock:
        """Serialises the account's token requests: a rotating refresh token is used once."""
        lock = self.grant_locks.get(account)
        if lock is None:
            lock = self.grant_locks[account] = asyncio.Lock()
        return lock

    async def token(self, m: GrantHolder, acc: AccountConfig, resource: str, *, force: bool,
                    rejected: Secret | None = None) -> Secret:
        """Another resource's token: cached, else one shared request with the account's grant."""
        key = (acc.name, resource)
        margin_s = 0.0 if force else m._margin_s()
        cached = self.usable(key, m._clock(), margin_s, rejected if force else None)
        if cached is not None and (not force or rejected is not None):
            return cached
        task = self.inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(m, acc, resource))
            self.inflight[key] = task
            task.add_done_callback(lambda t: self.inflight.pop(key, None)
                                   if self.inflight.get(key) is t else None)
        return await asyncio.shield(task)

    async def _refresh(self, m: GrantHolder, acc: AccountConfig, resource: str) -> Secret:
        provider = m.provider_for(acc)
        scopes = resource_scopes(provider, acc, resource)
        async with self.grant_lock(acc.name):
            try:
                if m._flow(acc) in ON_DEMAND_FLOWS:
                    response = await m._with_retries(lambda: provider.fetch_app_token(
                        m._client(), acc.mailbox, account=acc.name, scopes=scopes))
                else:
                    response = await self._request(m, acc, provider, scopes)
            except AuthorizationNeeded as exc:
                raise resource_refusal(acc, exc) from None
            log.info("account '%s': %s token obtained", acc.name, resource)
            return self.keep((acc.name, resource), response, m._clock())

    async def _request(self, m: GrantHolder, acc: AccountConfig, provider: OAuthProvider,
                       scopes: tuple[str, ...]) -> TokenResponse:
        """A refresh-token request for another resource under the store's lease (the same refresh
        token as the account's own refresh); a rotated refresh token is saved compare-and-set."""
        name = acc.name
        give_up = time.monotonic() + 3 * m._lease_ttl_s
        while True:
            current, version = await m._versioned(name, fresh=True)
            lease = await m._lease(name)
            if lease is None:  # another process refreshes: wait for its write, then use its token
                if time.monotonic() > give_up:
                    raise TokenRefreshFailed(f"account '{name}': another relay holds the refresh lease "
                                             "and wrote no new token", account=name)
                if version is None or await m.store.watch(name, version, m._lease_ttl_s) is None:
                    await asyncio.sleep(LEASE_RETRY_S)
                continue
            try:
                if version is not None and not isinstance(lease, LocalLease):
                    current, version = await m._versioned(name, fresh=True)  # a holder just finished?
                if current is None or current.refresh_token is None or current.needs_authorization:
                    raise AuthorizationNeeded(f"account '{name}' has no usable grant; run "
                                              f"`relay authorize {name}`", account=name)
                response = await m._with_retries(functools.partial(
                    provider.refresh, m._client(), current.refresh_token, account=name, scopes=scopes))
                rotated = with_rotated_refresh(current, response, m._clock())
                if rotated is not None:
                    await m._save(name, rotated, version)
                return response
            finally:
                await lease.release()


def with_rotated_refresh(current: TokenSet, response: TokenResponse, now: datetime) -> TokenSet | None:
    """The stored set with the refresh token a resource request rotated, or None if unchanged."""
    if response.refresh_token is None or response.refresh_token == current.refresh_token:
        return None
    return replace(current, refresh_token=response.refresh_token, obtained_at=now)


def resource_refusal(account: AccountConfig, exc: AuthorizationNeeded) -> AuthorizationNeeded:
    """A refused Graph token request: the fix is consent for the Graph permissions, not a dead grant."""
    return AuthorizationNeeded(
        f"account '{account.name}': the identity platform refused a Microsoft Graph token ({exc}); "
        f"grant the app the Graph permissions (Mail.Send, Mail.ReadWrite for reading) with admin "
        f"consent, or run `relay authorize {account.name}` again", account=account.name)

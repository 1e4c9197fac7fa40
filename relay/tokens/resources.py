"""Access tokens for another resource (Microsoft Graph) from an account's one grant.

The account's stored `TokenSet` holds the refresh token and the SMTP/POP3 access token; a Graph
token is asked for with the same refresh token (or, app-only, the same client credentials) and
the Graph scopes, and cached in memory per (account, resource): an access token lives an hour,
so after a restart one request gets a new one. A refresh token rotated by that request replaces
the stored one (the old one may be revoked already).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime

from relay.config.model import AccountConfig
from relay.errors import AuthorizationNeeded, ConfigError
from relay.providers.base import OAuthProvider, TokenResponse
from relay.secret import Secret
from relay.tokens.model import TokenSet, expiry_from
from relay.tokens.source import GRAPH


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
    """In-memory cache and single-flight bookkeeping of per-resource access tokens."""

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

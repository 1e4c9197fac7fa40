"""TokenManager: hands sessions a valid access token and keeps tokens fresh by itself.

- Tokens come from the store (re-read when another process, e.g. `relay authorize`, wrote it).
- Refreshes are single flight per account: any number of concurrent callers share one request;
  across processes (replicas sharing a Redis store) the store's lease makes it one request in all,
  the others wait for the new version (TokenStore.watch); the write is compare-and-set against
  the version read, so a refresh that lost its lease never overwrites newer tokens (fencing).
- Reads come from the store's in-memory snapshot; the store is re-read (off the loop) only on the
  refresh path, so neither a slow disk nor a lock held by `relay authorize` stalls a session.
- A rotated refresh token is persisted before the new access token is handed out; if the write
  fails it is kept in memory (the old one may be revoked already) and saved at the next check.
- Transient failures are retried with exponential backoff and jitter, then TokenRefreshFailed.
- A dead grant (invalid_grant ...) marks the account, in memory and in the store, and is logged
  once as an ERROR naming `relay authorize ACCOUNT`; later calls fail fast without a request.
- Keep-alive: a grant not refreshed for ``limits.token_keepalive_days`` is refreshed even when the
  account is idle (Microsoft refresh tokens die after 90 days unused).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relay.config.model import AccountConfig, RelayConfig
from relay.errors import AuthorizationNeeded, ConfigError, OAuthError, TokenRefreshFailed, TokenStoreError
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.providers.base import OAuthProvider, TokenResponse
from relay.providers.registry import load_provider_class
from relay.secret import Secret
from relay.tokens.cooldown import RefusedTokenCooldown
from relay.tokens.interface import Lease, LocalLease, TokenStore
from relay.tokens.model import TokenSet, expiry_from
from relay.tokens.refresher import TokenRefresher
from relay.tokens.resources import ResourceTokens
from relay.tokens.status import ON_DEMAND_FLOWS, AccountTokenStatus, account_status, newer, still_older

__all__ = ["AccountTokenStatus", "TokenManager", "new_http_client"]

if TYPE_CHECKING:
    import httpx  # imported by new_http_client(), at the first token request

log = logging.getLogger("relay.tokens")

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]

# A forced refresh right after a refresh returns the fresh token instead of asking again: a burst of
# sessions whose old token was rejected then causes one refresh, not one each.
FORCE_REFRESH_MIN_AGE_S = 10.0
DEFAULT_HTTP_TIMEOUT_S = 20.0
DEFAULT_LEASE_TTL_S = 30.0
LEASE_RETRY_S = 0.2


def _utc_now() -> datetime:
    return datetime.now(UTC)


def new_http_client(timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> httpx.AsyncClient:
    """Return the HTTP client used for token requests (TLS verified, bounded timeouts)."""
    import httpx  # noqa: PLC0415 - not at start-up; see relay.providers.base

    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), follow_redirects=False)


class TokenManager(TokenRefresher):
    """Implements relay.tokens.source.TokenSource over a TokenStore and the configured providers."""

    observer: RelayObserver = NULL_OBSERVER  # relay.metrics: token refresh outcomes

    def __init__(self, config: RelayConfig, store: TokenStore, *, http: httpx.AsyncClient | None = None,
                 clock: Clock | None = None, sleep: Sleep | None = None, retry_attempts: int = 3,
                 retry_base_delay_s: float = 0.5, check_interval_s: float = 30.0,
                 lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        self.config = config
        self.store = store
        self._http = http
        self._owns_http = http is None
        self._clock = clock or _utc_now
        self._sleep = sleep or asyncio.sleep
        self._attempts = max(1, retry_attempts)
        self._base_delay_s = retry_base_delay_s
        self._check_interval_s = check_interval_s
        self._lease_ttl_s = lease_ttl_s
        self._providers: dict[str, OAuthProvider] = {}
        self._memory: dict[str, TokenSet] = {}
        self._inflight: dict[str, asyncio.Task[TokenSet]] = {}
        self._errors: dict[str, str] = {}
        self._reported: dict[str, str] = {}
        # account -> the stored version its in-memory tokens replace (None: unknown, the store was
        # unreadable); such tokens are the newest and live only in memory until saved
        self._unsaved: dict[str, int | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._resources = ResourceTokens()
        self._cooldown = RefusedTokenCooldown(config.limits.upstream_auth_cooldown_s)

    # --- TokenSource ---------------------------------------------------------------------------

    async def get_token(self, account: str, resource: str | None = None) -> Secret:
        """Return a valid access token, refreshing (once, shared) when near expiry; ``resource``
        (relay.tokens.source.GRAPH) for another resource's token from the same grant."""
        acc = self._account(account)
        if resource is not None:
            return await self._resources.token(self, acc, resource, force=False)
        current = await self._current(acc.name)
        if current is not None and current.is_usable(self._clock(), self._margin_s()):
            return current.access_token
        return (await self._single_flight(acc, force=False, margin_s=self._margin_s())).access_token

    async def force_refresh(self, account: str, rejected: Secret | None = None,
                            resource: str | None = None) -> Secret:
        """Refresh now because the upstream rejected a token that looked valid (single flight too).

        With ``rejected`` (the token the upstream refused), a caller whose token was already
        replaced gets the newer one without another request; a token refreshed seconds ago that the
        upstream refuses (revoked right after issue) is still replaced.
        """
        acc = self._account(account)
        if resource is not None:
            return await self._resources.token(self, acc, resource, force=True, rejected=rejected)
        self._cooldown.check(acc.name)  # the upstream refused even a fresh token: no request
        token = (await self._single_flight(acc, force=True, margin_s=self._margin_s(),
                                           rejected=rejected)).access_token
        if rejected is not None:  # issued because the upstream refused a token: watch this one
            self._cooldown.issued(acc.name, token)
        return token

    def refreshed_token_refused(self, account: str, token: Secret) -> None:
        """The upstream refused ``token``, which `force_refresh` just handed out: when it is still
        fresh, the account cools down (relay.tokens.cooldown)."""
        self._cooldown.refused(account, token)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task that refreshes tokens ahead of expiry."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(), name="token-refresher")

    async def close(self) -> None:
        """Stop the background task and close the HTTP client we created."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def status(self) -> list[AccountTokenStatus]:
        """Return the token status of every configured account."""
        try:
            stored = await self.store.load_all()
        except TokenStoreError as exc:
            stored = dict(self._memory)
            log.error("%s", exc)
        now = self._clock()
        return [account_status(acc, self._flow(acc), newer(stored.get(acc.name), self._memory.get(acc.name)),
                               self._errors.get(acc.name), now)
                for acc in self.config.accounts.values()]

    def forget(self, name: str) -> None:
        """Drop what is kept in memory for an account whose stored tokens were deleted (revoke)."""
        for kept in (self._memory, self._errors, self._reported):
            kept.pop(name, None)
        self._unsaved.pop(name, None)

    @property
    def unsaved_accounts(self) -> frozenset[str]:
        """Accounts whose newest tokens could not be written to the store (kept in memory)."""
        return frozenset(self._unsaved)

    def provider_for(self, account: AccountConfig) -> OAuthProvider:
        """Return (and cache) the provider instance of the account's credentials."""
        creds = self.config.credentials_for(account)
        if creds.name not in self._providers:
            self._providers[creds.name] = load_provider_class(creds.provider)(creds)
        return self._providers[creds.name]

    # --- internals -----------------------------------------------------------------------------

    def _margin_s(self) -> float:
        return self.config.limits.token_refresh_margin_s

    def _account(self, name: str) -> AccountConfig:
        try:
            return self.config.accounts[name]
        except KeyError:
            raise ConfigError(f"accounts.{name}", f"account '{name}' is not configured") from None

    def _flow(self, acc: AccountConfig) -> str:
        return self.config.credentials_for(acc).flow

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = new_http_client()
        return self._http

    async def _current(self, name: str, *, fresh: bool = False) -> TokenSet | None:
        """The newest of the stored and the in-memory tokens (store errors -> TokenRefreshFailed)."""
        return (await self._versioned(name, fresh=fresh))[0]

    async def _versioned(self, name: str, *, fresh: bool) -> tuple[TokenSet | None, int | None]:
        """(tokens, version read); version None when the store could not be read (memory only)."""
        try:
            stored = await self.store.get_versioned(name, fresh=fresh)
        except TokenStoreError as exc:
            memory = self._memory.get(name)
            if memory is None and fresh:
                with contextlib.suppress(TokenStoreError):  # what the store still holds in memory
                    memory = (await self.store.get_versioned(name)).tokens
            if memory is not None:
                self._report(name, f"account '{name}': the token store cannot be read, using the tokens "
                             f"held in memory: {exc}")
                return memory, None
            self._report(name, f"the token store cannot be read: {exc}")
            raise TokenRefreshFailed(f"account '{name}': the token store cannot be read",
                                     account=name) from None
        memory = self._memory.get(name)
        if name in self._unsaved and memory is not None:
            if still_older(stored, memory, self._unsaved[name]):
                return memory, stored.version  # not saved yet: the store holds the older (revoked) tokens
            del self._unsaved[name]  # someone stored newer tokens meanwhile: theirs win
            self._memory.pop(name, None)
            return stored.tokens, stored.version
        return newer(stored.tokens, memory), stored.version

    async def _single_flight(self, acc: AccountConfig, *, force: bool, margin_s: float,
                             rejected: Secret | None = None) -> TokenSet:
        task = self._inflight.get(acc.name)
        if task is None:
            task = asyncio.create_task(self._locked(acc.name, self._refresh(
                acc, force=force, margin_s=margin_s, rejected=rejected)))
            self._inflight[acc.name] = task
            task.add_done_callback(functools.partial(self._flight_done, acc.name))
        return await asyncio.shield(task)

    async def _locked(self, name: str, refresh: Awaitable[TokenSet]) -> TokenSet:
        async with self._resources.grant_lock(name):
            return await refresh

    def _flight_done(self, name: str, task: asyncio.Task[TokenSet]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # mark retrieved even when every waiter was cancelled

    def _still_good(self, current: TokenSet | None, *, force: bool, margin_s: float,
                    rejected: Secret | None) -> bool:
        """True when ``current`` makes a token request unnecessary (someone refreshed meanwhile)."""
        now = self._clock()
        if current is None or current.needs_authorization:
            return False
        if not force:
            return current.is_usable(now, margin_s)
        if rejected is not None:
            return current.access_token != rejected and current.is_usable(now, 0)
        age_s = (now - current.obtained_at).total_seconds()
        return 0 <= age_s < FORCE_REFRESH_MIN_AGE_S and current.is_usable(now, 0)

    async def _refresh(self, acc: AccountConfig, *, force: bool, margin_s: float,
                       rejected: Secret | None = None) -> TokenSet:
        """Refresh under the store's lease; wait for another holder's result instead of asking too."""
        name = acc.name
        give_up = time.monotonic() + 3 * self._lease_ttl_s
        while True:
            current, version = await self._versioned(name, fresh=True)
            if self._still_good(current, force=force, margin_s=margin_s, rejected=rejected):
                assert current is not None
                return current
            try:
                lease = await self._lease(name)
            except TokenRefreshFailed:
                if current is not None and not force and current.is_usable(self._clock(), 0):
                    return current  # degraded: serve the tokens held until they expire
                raise
            if lease is None:  # another process refreshes: wait for its write (or its lease to lapse)
                if time.monotonic() > give_up:
                    raise TokenRefreshFailed(f"account '{name}': another relay holds the refresh lease and "
                                             "wrote no new token", account=name)
                if version is None or await self.store.watch(name, version, self._lease_ttl_s) is None:
                    await asyncio.sleep(LEASE_RETRY_S)
                force = False  # whatever the holder wrote is newer than the rejected token
                rejected = None
                continue
            try:
                if version is not None and not isinstance(lease, LocalLease):
                    current, version = await self._versioned(name, fresh=True)  # a holder just finished?
                    if self._still_good(current, force=force, margin_s=margin_s, rejected=rejected):
                        assert current is not None
                        return current
                return await self._request(acc, current, version, force=force)
            finally:
                await lease.release()

    async def _lease(self, name: str) -> Lease | None:
        """The store's lease for a refresh (None: another process holds it)."""
        try:
            return await self.store.try_lease(name, self._lease_ttl_s)
        except TokenStoreError as exc:
            # Refreshing without the lease could present a refresh token another replica already
            # rotated (a provider with strict rotation then revokes the grant): keep the tokens held.
            raise TokenRefreshFailed(f"account '{name}': not refreshing while the token store cannot "
                                     f"coordinate the refresh ({exc})", account=name) from None

    async def _request(self, acc: AccountConfig, current: TokenSet | None, version: int | None, *,
                       force: bool) -> TokenSet:
        """Call the token endpoint and store the result compare-and-set against ``version``."""
        name = acc.name
        provider = self.provider_for(acc)
        on_demand = self._flow(acc) in ON_DEMAND_FLOWS
        if not on_demand:
            if current is None or current.refresh_token is None:
                raise self._needs_authorization(name, f"account '{name}' has not been authorized yet; "
                                                f"run `relay authorize {name}`")
            if current.needs_authorization:
                raise AuthorizationNeeded(current.last_error or f"account '{name}': run `relay authorize "
                                          f"{name}`", account=name)
        try:
            if on_demand:
                response = await self._with_retries(
                    lambda: provider.fetch_app_token(self._client(), acc.mailbox, account=name))
            else:
                assert current is not None and current.refresh_token is not None
                refresh_token = current.refresh_token
                response = await self._with_retries(
                    lambda: provider.refresh(self._client(), refresh_token, account=name))
        except AuthorizationNeeded as exc:
            self.observer.token_refreshed(name, "needs_authorization", str(exc))
            await self._mark_needs_authorization(name, current, str(exc))
            raise
        except TokenRefreshFailed as exc:
            self.observer.token_refreshed(name, "failed", str(exc))
            self._errors[name] = str(exc)
            if current is not None and not force and current.is_usable(self._clock(), 0):
                log.warning("account '%s': refresh failed, using the current token until it expires: %s",
                            name, exc)
                return current
            raise
        except (OAuthError, ConfigError) as exc:
            # A setting is wrong (client secret, tenant, key file): an operator must act.
            self.observer.token_refreshed(name, "needs_authorization", str(exc))
            self._errors[name] = str(exc)
            self._report(name, str(exc))
            raise AuthorizationNeeded(str(exc), account=name) from None
        fresh = self._token_set(acc, response, current)
        self.observer.token_refreshed(name, "ok")
        return await self._save(name, fresh, version)

    def _token_set(self, acc: AccountConfig, response: TokenResponse, current: TokenSet | None) -> TokenSet:
        now = self._clock()
        refresh = response.refresh_token or (current.refresh_token if current else None)
        scopes = tuple(response.scope.split()) if response.scope else self.provider_for(acc).scopes()
        return TokenSet(account=acc.name, credentials=acc.credentials, access_token=response.access_token,
                        expires_at=expiry_from(now, response.expires_in_s), refresh_token=refresh,
                        scopes=scopes, obtained_at=now)

    async def _with_retries(self, call: Callable[[], Awaitable[TokenResponse]]) -> TokenResponse:
        """Retry transient failures with exponential backoff and jitter, then re-raise the last."""
        for attempt in range(self._attempts):
            try:
                return await call()
            except TokenRefreshFailed:
                if attempt + 1 >= self._attempts:
                    raise
                delay_s = self._base_delay_s * (2 ** attempt) * (0.5 + random.random())  # noqa: S311 - jitter
                await self._sleep(delay_s)
        raise AssertionError("unreachable")

    def _needs_authorization(self, name: str, message: str) -> AuthorizationNeeded:
        self._report(name, message)
        return AuthorizationNeeded(message, account=name)

    async def _mark_needs_authorization(self, name: str, current: TokenSet | None, message: str) -> None:
        self._report(name, message)
        if current is None:
            return
        marked = current.marked(message, needs_authorization=True)
        self._memory[name] = marked
        try:
            await self.store.put(marked)
        except TokenStoreError as exc:
            log.error("account '%s': could not record the needs-authorize status: %s", name, exc)

    def _report(self, name: str, message: str) -> None:
        """Log an operator-facing ERROR once per account and message."""
        if self._reported.get(name) != message:
            self._reported[name] = message
            log.error("%s", message, extra={"account": name, "outcome": "token_error"})

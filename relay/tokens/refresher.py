"""TokenManager's saving and background refresh: the compare-and-set save of fresh tokens (kept in
memory when the store cannot be written, saved at the next check) and the refresh pass that runs
every ``check_interval_s``. A mixin of `relay.tokens.manager.TokenManager`, typed against the small
`RefresherHost` protocol so that this module does not import the manager.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from relay.config.model import AccountConfig, RelayConfig
from relay.errors import OAuthError, TokenRefreshFailed, TokenStoreError
from relay.secret import Secret
from relay.tokens.interface import TokenStore, VersionConflict
from relay.tokens.model import TokenSet
from relay.tokens.status import ON_DEMAND_FLOWS

log = logging.getLogger("relay.tokens")


class RefresherHost(Protocol):
    """What the saving and the refresh pass use of their TokenManager."""

    config: RelayConfig
    store: TokenStore
    _clock: Callable[[], datetime]
    _check_interval_s: float
    _memory: dict[str, TokenSet]
    _errors: dict[str, str]
    _reported: dict[str, str]
    _unsaved: dict[str, int | None]

    def _margin_s(self) -> float: ...

    def _flow(self, acc: AccountConfig) -> str: ...

    async def _current(self, name: str, *, fresh: bool = False) -> TokenSet | None: ...

    async def _versioned(self, name: str, *, fresh: bool) -> tuple[TokenSet | None, int | None]: ...

    async def _single_flight(self, acc: AccountConfig, *, force: bool, margin_s: float,
                             rejected: Secret | None = None) -> TokenSet: ...

    async def refresh_due(self) -> list[str]: ...


class TokenRefresher:
    """Mixin: `refresh_due` (one background pass), its loop, and `_save` (used by every refresh)."""

    async def refresh_due(self: RefresherHost) -> list[str]:
        """One pass of the background refresher: refresh accounts within twice the margin of expiry.

        Returns the accounts refreshed. Failures are logged, never raised.
        """
        refreshed: list[str] = []
        for name in sorted(self._unsaved):
            try:
                _, version = await self._versioned(name, fresh=True)
                if name not in self._unsaved:
                    continue  # newer tokens were stored meanwhile
                await self.store.compare_and_set(self._memory[name], self._unsaved[name] or version or 0)
            except VersionConflict as exc:
                log.warning("account '%s': %s", name, exc)
                self._memory.pop(name, None)
                self._unsaved.pop(name, None)
                continue
            except TokenStoreError as exc:
                log.error("account '%s': tokens still cannot be saved: %s", name, exc)
                continue
            self._unsaved.pop(name, None)
            self._errors.pop(name, None)
            log.info("account '%s': tokens kept in memory are saved now", name)
        ahead_s = 2 * self._margin_s() + self._check_interval_s
        keepalive_s = self.config.limits.token_keepalive_days * 86400
        for acc in self.config.accounts.values():
            try:
                current = await self._current(acc.name)
            except TokenRefreshFailed:
                continue
            if current is None or current.needs_authorization:
                continue
            if current.refresh_token is None and self._flow(acc) not in ON_DEMAND_FLOWS:
                continue
            idle_s = (self._clock() - current.obtained_at).total_seconds()
            keepalive = current.refresh_token is not None and idle_s >= keepalive_s
            if current.remaining_s(self._clock()) > ahead_s and not keepalive:
                continue
            try:
                if keepalive:
                    log.info("account '%s': keep-alive refresh (last refresh %.1f days ago; "
                             "limits.token_keepalive_days: %g)", acc.name, idle_s / 86400,
                             self.config.limits.token_keepalive_days,
                             extra={"account": acc.name, "outcome": "keepalive"})
                await self._single_flight(acc, force=keepalive, margin_s=ahead_s)
                refreshed.append(acc.name)
            except (OAuthError, TokenStoreError) as exc:
                log.debug("background refresh for account '%s' failed: %s", acc.name, exc)
            except Exception:  # a bug must not end the refresher: the next pass tries again
                log.exception("background refresh for account '%s' failed unexpectedly", acc.name)
        return refreshed

    async def _save(self: RefresherHost, name: str, fresh: TokenSet, version: int | None) -> TokenSet:
        """Persist (compare-and-set) fresh tokens; keep them in memory if the write fails."""
        # Kept in memory before saving: the provider may have rotated (and so revoked) the old refresh
        # token, so dropping the new one on a failed write would leave the account needing authorize.
        self._memory[name] = fresh
        try:
            if version is None:
                raise TokenStoreError("the token store could not be read before the refresh")
            await self.store.compare_and_set(fresh, version)
        except VersionConflict as exc:
            log.warning("account '%s': %s", name, exc)  # fencing: a newer writer wins in the store
            self._memory.pop(name, None)
            return fresh
        except TokenStoreError as exc:
            log.error("account '%s': new tokens could not be saved, the old stored tokens are kept; using "
                      "them from memory and saving again at the next refresh check (a restart before "
                      "then may need `relay authorize %s`): %s", name, name, exc)
            self._errors[name] = str(exc)
            if name not in self._unsaved or version is not None:
                self._unsaved.setdefault(name, version)
            return fresh
        self._unsaved.pop(name, None)
        self._errors.pop(name, None)
        self._reported.pop(name, None)
        log.info("account '%s': token refreshed, valid until %s", name, fresh.expires_at.isoformat(),
                 extra={"account": name, "outcome": "refreshed"})
        return fresh

    async def _refresh_loop(self: RefresherHost) -> None:
        while True:
            try:
                await self.refresh_due()
            except Exception:  # e.g. the store failing in an unforeseen way: try again next pass
                log.exception("background token refresh pass failed; retrying in %.0f s",
                              self._check_interval_s)
            await asyncio.sleep(self._check_interval_s)

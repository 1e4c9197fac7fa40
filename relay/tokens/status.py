"""What `relay tokens` / `relay check` show per account, and how two TokenSets are compared."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from relay.config.model import AccountConfig
from relay.tokens.interface import StoredTokens
from relay.tokens.model import TokenSet

ON_DEMAND_FLOWS = frozenset({"client_credentials", "service_account"})


@dataclass(frozen=True)
class AccountTokenStatus:
    """One line of `relay tokens` / `relay check`: never contains a token."""

    account: str
    credentials: str
    flow: str
    state: str  # valid | expired | needs authorize | not authorized | on demand
    valid_until: datetime | None
    last_error: str | None
    obtained_at: datetime | None = None  # the last refresh (keep-alive counts from here)


def account_status(acc: AccountConfig, flow: str, ts: TokenSet | None, error: str | None,
                   now: datetime) -> AccountTokenStatus:
    """The status line of ``acc`` whose newest tokens are ``ts``."""
    error = error or (ts.last_error if ts else None)
    if ts is None:
        state = "on demand" if flow in ON_DEMAND_FLOWS else "not authorized"
        if state == "not authorized":
            error = error or f"run `relay authorize {acc.name}`"
    elif ts.needs_authorization:
        state = "needs authorize"
    elif ts.remaining_s(now) <= 0:
        state = "on demand" if flow in ON_DEMAND_FLOWS else "expired"
    else:
        state = "valid"
    return AccountTokenStatus(acc.name, acc.credentials, flow, state, ts.expires_at if ts else None, error,
                              ts.obtained_at if ts else None)


def newer(a: TokenSet | None, b: TokenSet | None) -> TokenSet | None:
    """The more recently obtained TokenSet; on a tie ``a`` (the store) wins unless ``b`` is marked."""
    if a is None:
        return b
    if b is None:
        return a
    if b.obtained_at > a.obtained_at or (b.obtained_at == a.obtained_at and b.needs_authorization):
        return b
    return a


def still_older(stored: StoredTokens, memory: TokenSet, replaces: int | None) -> bool:
    """True while the store holds what unsaved in-memory tokens replace (not someone's newer ones)."""
    if replaces is not None:
        return stored.version <= replaces
    return stored.tokens is None or stored.tokens.obtained_at <= memory.obtained_at

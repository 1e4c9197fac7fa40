"""TokenSet: what the store keeps per account, and its JSON form inside the encrypted file."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from relay.errors import TokenStoreError
from relay.providers.answers import clamp_lifetime
from relay.secret import Secret


@dataclass(frozen=True)
class TokenSet:
    """The tokens of one account. ``needs_authorization`` marks a dead grant (invalid_grant ...)."""

    account: str
    credentials: str
    access_token: Secret
    expires_at: datetime  # UTC
    refresh_token: Secret | None = None
    scopes: tuple[str, ...] = ()
    obtained_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    needs_authorization: bool = False
    last_error: str | None = None  # a message safe to show (never a token)

    def remaining_s(self, now: datetime) -> float:
        """Seconds of validity left at ``now`` (negative once expired)."""
        return (self.expires_at - now).total_seconds()

    def is_usable(self, now: datetime, margin_s: float) -> bool:
        """True when the access token is still valid for at least ``margin_s`` seconds."""
        return bool(self.access_token) and not self.needs_authorization and self.remaining_s(now) > margin_s

    def marked(self, error: str | None, *, needs_authorization: bool) -> TokenSet:
        """Return a copy with the status fields changed."""
        return replace(self, last_error=error, needs_authorization=needs_authorization)

    def to_json(self) -> dict[str, object]:
        """Return the JSON-able dict stored (encrypted) in the token store."""
        return {
            "account": self.account,
            "credentials": self.credentials,
            "access_token": self.access_token.reveal(),
            "expires_at": self.expires_at.astimezone(UTC).isoformat(),
            "refresh_token": self.refresh_token.reveal() if self.refresh_token else None,
            "scopes": list(self.scopes),
            "obtained_at": self.obtained_at.astimezone(UTC).isoformat(),
            "needs_authorization": self.needs_authorization,
            "last_error": self.last_error,
        }

    @classmethod
    def from_json(cls, data: object) -> TokenSet:
        """Build a TokenSet from its stored dict; TokenStoreError when a field is missing or wrong."""
        if not isinstance(data, dict):
            raise TokenStoreError("a token store entry is not an object")
        try:
            refresh = data.get("refresh_token")
            return cls(
                account=str(data["account"]),
                credentials=str(data["credentials"]),
                access_token=Secret(str(data["access_token"])),
                expires_at=_utc(data["expires_at"]),
                refresh_token=Secret(refresh) if isinstance(refresh, str) and refresh else None,
                scopes=tuple(str(s) for s in data.get("scopes") or ()),
                obtained_at=_utc(data["obtained_at"]),
                needs_authorization=bool(data.get("needs_authorization", False)),
                last_error=data.get("last_error") if isinstance(data.get("last_error"), str) else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            name = str(data.get("account", "?"))[:64]
            raise TokenStoreError(f"the token store entry for account '{name}' is malformed "
                                  f"({type(exc).__name__}); run `relay authorize {name}` again") from None


def expiry_from(obtained_at: datetime, expires_in_s: float) -> datetime:
    """Return the UTC expiry for a token that lives ``expires_in_s`` seconds from ``obtained_at``
    (clamped to MAX_TOKEN_LIFETIME_S)."""
    return obtained_at.astimezone(UTC) + timedelta(seconds=clamp_lifetime(expires_in_s, 0))


def _utc(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError("timestamp is not a string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)

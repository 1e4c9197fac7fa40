"""What a provider's token and device-authorization endpoints answer, as values.

`TokenResponse` (RFC 6749 5.1), `DeviceAuthorization` and `DevicePending` (RFC 8628), the
`Endpoints` a provider uses, and `clamp_lifetime` for the ``expires_in`` numbers they carry. These
are the lowest layer of token handling: the providers produce them, the token store keeps what they
say (`relay.tokens.model` imports from here, never the other way round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from relay.secret import Secret

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class Endpoints:
    """The provider's OAuth endpoints (None: the provider has no such endpoint)."""

    token_url: str
    authorize_url: str | None = None
    device_authorization_url: str | None = None
    revocation_url: str | None = None


@dataclass(frozen=True)
class TokenResponse:
    """A successful token endpoint answer (RFC 6749 5.1)."""

    access_token: Secret
    expires_in_s: int
    refresh_token: Secret | None = None
    scope: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - a token type name, not a secret


@dataclass(frozen=True)
class DeviceAuthorization:
    """An RFC 8628 device authorization answer (Google's ``verification_url`` accepted too)."""

    device_code: Secret
    user_code: str
    verification_uri: str
    expires_in_s: int
    interval_s: int = 5
    verification_uri_complete: str | None = None


@dataclass(frozen=True)
class DevicePending:
    """Polling signal: the user has not approved yet; ``slow_down`` means add 5 s to the interval."""

    slow_down: bool = False


# The longest token lifetime believed: a provider answering more (expires_in Infinity, 1e12) gets
# its token refreshed after this instead of an OverflowError.
MAX_TOKEN_LIFETIME_S = 365 * 24 * 3600


def clamp_lifetime(expires_in: object, default_s: int) -> int:
    """A token endpoint's ``expires_in`` as whole seconds in 0..MAX_TOKEN_LIFETIME_S.

    Not a number (or NaN): ``default_s``; negative: 0; infinite or huge: the maximum."""
    try:
        value = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default_s
    if math.isnan(value):
        return default_s
    return int(min(max(value, 0.0), MAX_TOKEN_LIFETIME_S))

"""The small interface through which SMTP/POP3 sessions get access tokens."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from relay.secret import Secret

GRAPH = "graph"
"""The ``resource`` of a Microsoft Graph token (None: the account's SMTP/POP3 resource)."""


class TokenSource(Protocol):
    """Gives sessions a valid access token for an account (by account name).

    Raises `relay.errors.AuthorizationNeeded` when an operator must run `relay authorize`, and
    `relay.errors.TokenRefreshFailed` on transient failures (the session answers 4xx / -ERR
    [SYS/TEMP]).
    """

    async def get_token(self, account: str, resource: str | None = None) -> Secret:
        """Return a valid access token, refreshing first if it is near expiry.

        ``resource`` (e.g. `GRAPH`) asks for another resource's token from the same grant: one
        refresh token, an access token cached per resource.
        """
        ...

    async def force_refresh(self, account: str, rejected: Secret | None = None,
                            resource: str | None = None) -> Secret:
        """Refresh now, because the upstream rejected ``rejected``, a token that looked valid."""
        ...


@runtime_checkable
class RefusalAware(Protocol):
    """A TokenSource that wants to know when the upstream refused a token `force_refresh` had
    just handed out (relay.tokens.manager.TokenManager: the refused-token cool-down)."""

    def refreshed_token_refused(self, account: str, token: Secret) -> None:
        """The upstream refused ``token`` right after a forced refresh issued it."""
        ...

"""An upstream login that failed, as the client hears it and as the operator reads it.

`Refusal` names why a client's login got no session; its text is what the client reads, and each
protocol frames it with its own response code (POP3 ``[SYS/TEMP]``, IMAP ``[UNAVAILABLE]`` ...).
`classify` maps an exception from a mailbox opener to the refusal and the fix the log names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.config.model import AccountConfig
from relay.errors import AuthorizationNeeded, OAuthError, TokenRefreshFailed, UpstreamUnavailable


class Refusal(enum.Enum):
    """Why a login got no session (the value is the client's text; see `text`)."""

    INVALID_CREDENTIALS = "Invalid credentials"
    NO_MAILBOX = "Account {username} has no {protocol} mailbox configured"
    REAUTHORIZE = "Mailbox re-authorization needed; ask the relay operator"
    OAUTH_FAILING = "Cannot obtain an access token right now; try again later"
    UNAVAILABLE = "Upstream mail server unavailable; try again later"
    UPSTREAM_ERROR = "Upstream mail server error; try again later"
    REJECTED = "Upstream mailbox login rejected; re-authorization needed"
    LOCAL_ERROR = "Local error; try again later"

    def text(self, account: AccountConfig | None, protocol: str) -> str:
        """The client's text, with the account's user name and the protocol filled in."""
        return self.value.format(username=account.username if account else "-",
                                 protocol=protocol.upper())


@dataclass(frozen=True)
class LoginFailure:
    """What the client hears (`refusal`) and what the operator should do (`fix`)."""

    refusal: Refusal
    fix: str


def classify(exc: Exception, account: AccountConfig, protocol: str) -> LoginFailure:
    """The refusal and fix for an opener's exception other than UpstreamAuthRejected."""
    if isinstance(exc, AuthorizationNeeded):
        return LoginFailure(Refusal.REAUTHORIZE, f"run `relay authorize {account.name}`")
    if isinstance(exc, (TokenRefreshFailed, OAuthError)):
        return LoginFailure(Refusal.OAUTH_FAILING, "the OAuth provider is unreachable or failing; "
                            "the client may retry later")
    if isinstance(exc, UpstreamUnavailable):
        return LoginFailure(Refusal.UNAVAILABLE, "check the upstream host, port and TLS settings "
                            f"under accounts.{account.name}.{protocol}")
    return LoginFailure(Refusal.UPSTREAM_ERROR, "see the error above")


def token_rejected_fix(account: AccountConfig, access: str) -> str:
    """The fix when the upstream refused even a fresh token: ``access`` says what to enable."""
    return (f"the token was rejected after a refresh: check that {access}, then run "
            f"`relay authorize {account.name}`")

"""The login-with-refresh rule for IMAP: the protocol-neutral `relay.upstream.login` with the
POP3/IMAP notion of a token refusal.

The rule is the one SMTP, POP3 and `relay check` use: get the current token, log in; when the upstream
refuses the token itself (`TokenRejected`), force one refresh and log in again once; a second
refusal is `UpstreamAuthRejected`. Other failures (outage, protocol error) are not retried here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from relay.config.model import AccountConfig
from relay.errors import UpstreamAuthRejected
from relay.pop3.upstream import TokenRejected
from relay.secret import Secret
from relay.tokens.source import TokenSource
from relay.upstream.login import login_with_refresh as shared_login_with_refresh

__all__ = ["TokenRejected", "login_with_refresh"]

T = TypeVar("T")


async def login_with_refresh(tokens: TokenSource, account: AccountConfig,
                             attempt: Callable[[Secret], Awaitable[T]]) -> T:
    """Run ``attempt(token)``; on TokenRejected refresh the token once and run it again
    (`relay.upstream.login.login_with_refresh`); a second refusal is `UpstreamAuthRejected`."""
    try:
        result, _ = await shared_login_with_refresh(
            tokens, account.name, attempt, token_refused=lambda exc: isinstance(exc, TokenRejected))
    except TokenRejected as exc:
        raise UpstreamAuthRejected(f"{exc} (also after a forced token refresh)",
                                   account=account.name, reply=exc.reply) from None
    return result

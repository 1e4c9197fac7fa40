"""The login-with-refresh rule for IMAP, through the POP3 upstream's existing pieces.

One adapter so IMAP can switch to the protocol-neutral upstream layer (relay/upstream/, being
extracted from the POP3 and SMTP clients) by changing this module only. The rule is the POP3
client's (relay.pop3.upstream.open_upstream): get the current token, log in; when the upstream
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

__all__ = ["TokenRejected", "login_with_refresh"]

T = TypeVar("T")


async def login_with_refresh(tokens: TokenSource, account: AccountConfig,
                             attempt: Callable[[Secret], Awaitable[T]]) -> T:
    """Run ``attempt(token)``; on TokenRejected refresh the token once and run it again."""
    token = await tokens.get_token(account.name)
    try:
        return await attempt(token)
    except TokenRejected:
        token = await tokens.force_refresh(account.name, rejected=token)
    try:
        return await attempt(token)
    except TokenRejected as exc:
        raise UpstreamAuthRejected(f"{exc} (also after a forced token refresh)",
                                   account=account.name, reply=exc.reply) from None

"""`login_with_refresh`: the one "log in, on refusal force a token refresh, retry once" policy.

A token can look valid (not expired) and still be refused: revoked, replaced by a sign-in
elsewhere, or its scopes changed. The upstream's refusal is then the only signal, so the relay
forces a refresh naming the rejected token (the token manager refreshes only if that token is
still the current one: concurrent sessions do not refresh twice) and tries once more. A second
refusal is final and goes to the operator with the upstream's reply; the token source hears of
it (`RefusalAware`), so an upstream that refuses even fresh tokens gets no more token requests
for a while (relay.tokens.cooldown).

POP3 and IMAP can tell a refused token from other refusals (a mailbox in use, POP disabled): their
clients raise `TokenRejected` for the former and log in through `connect_and_log_in`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from relay.errors import UpstreamAuthRejected
from relay.secret import Secret
from relay.tokens.source import RefusalAware, TokenSource

log = logging.getLogger("relay.upstream")

T = TypeVar("T")


def refused_token(exc: UpstreamAuthRejected) -> bool:
    """The default test: every XOAUTH2 refusal may be a bad token."""
    return True


async def login_with_refresh(
    tokens: TokenSource, account: str, login: Callable[[Secret], Awaitable[T]], *,
    token_refused: Callable[[UpstreamAuthRejected], bool] = refused_token,
) -> tuple[T, Secret]:
    """Run ``login(token)`` with the account's token; when it raises `UpstreamAuthRejected` that
    ``token_refused`` says is about the token, force one refresh and run it once more.

    Returns what ``login`` returned and the token it succeeded with. Raises what ``tokens``
    raises (`AuthorizationNeeded`, `TokenRefreshFailed`) and the second attempt's errors.
    """
    token = await tokens.get_token(account)
    try:
        return await login(token), token
    except UpstreamAuthRejected as first:
        if not token_refused(first):
            raise
        log.debug("account %s: upstream refused the token (%s); forcing a refresh", account,
                  first.reply or first)
    token = await tokens.force_refresh(account, rejected=token)
    try:
        return await login(token), token
    except UpstreamAuthRejected as second:
        if token_refused(second) and isinstance(tokens, RefusalAware):
            tokens.refreshed_token_refused(account, token)
        raise


class TokenRejected(UpstreamAuthRejected):
    """The upstream refused the access token itself; a refreshed token may succeed."""


class Connection(Protocol):
    """An upstream connection that can be closed (a POP3 or IMAP client session)."""

    async def close(self) -> None:
        """Close the connection."""


C = TypeVar("C", bound=Connection)


async def connect_and_log_in(tokens: TokenSource, account: str, connect: Callable[[], Awaitable[C]],
                             authenticate: Callable[[C, Secret], Awaitable[T]]) -> tuple[C, T]:
    """Open a connection with ``connect()`` and log in with ``authenticate(connection, token)``;
    a connection whose login fails is closed. When the upstream refused the token itself
    (`TokenRejected`), force one refresh and try again on a fresh connection; a second refusal is
    a plain `UpstreamAuthRejected` (re-authorization needed). The POP3 and IMAP clients use it."""

    async def attempt(token: Secret) -> tuple[C, T]:
        connection = await connect()
        try:
            return connection, await authenticate(connection, token)
        except BaseException:
            await connection.close()
            raise

    try:
        result, _ = await login_with_refresh(
            tokens, account, attempt, token_refused=lambda exc: isinstance(exc, TokenRejected))
    except TokenRejected as exc:
        raise UpstreamAuthRejected(f"{exc} (also after a forced token refresh)",
                                   account=account, reply=exc.reply) from None
    return result

"""Unit tests for `login_with_refresh`: one forced refresh on refusal, and the report to the token
source when the upstream refuses the freshly refreshed token too (the cool-down's signal)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from relay.errors import UpstreamAuthRejected
from relay.secret import Secret
from relay.upstream.login import TokenRejected, connect_and_log_in, login_with_refresh


class Tokens:
    """A token source handing out t0, then t1, t2 ... on each forced refresh; records reports."""

    def __init__(self) -> None:
        self.issued = 0
        self.refused: list[str] = []

    async def get_token(self, account: str, resource: str | None = None) -> Secret:
        return Secret(f"t{self.issued}")

    async def force_refresh(self, account: str, rejected: Secret | None = None,
                            resource: str | None = None) -> Secret:
        self.issued += 1
        return Secret(f"t{self.issued}")

    def refreshed_token_refused(self, account: str, token: Secret) -> None:
        self.refused.append(f"{account}:{token.reveal()}")


class PlainTokens:
    """A token source without the refusal report (a TokenSource need not implement it)."""

    async def get_token(self, account: str, resource: str | None = None) -> Secret:
        return Secret("t0")

    async def force_refresh(self, account: str, rejected: Secret | None = None,
                            resource: str | None = None) -> Secret:
        return Secret("t1")


def _upstream(accepts: set[str]) -> Callable[[Secret], object]:
    async def login(token: Secret) -> str:
        if token.reveal() not in accepts:
            raise UpstreamAuthRejected("535 5.7.8 refused", account="a")
        return token.reveal()
    return login


def test_refused_then_accepted_after_refresh_reports_nothing() -> None:
    """The first token refused, the refreshed one accepted: logged in with it, no refusal report."""
    tokens = Tokens()
    result, token = asyncio.run(login_with_refresh(tokens, "a", _upstream({"t1"})))  # type: ignore[arg-type]
    assert (result, token.reveal(), tokens.refused) == ("t1", "t1", [])


def test_refreshed_token_refused_too_is_reported_and_raised() -> None:
    """The refreshed token refused as well: the second refusal is raised and reported (once)."""
    tokens = Tokens()
    with pytest.raises(UpstreamAuthRejected):
        asyncio.run(login_with_refresh(tokens, "a", _upstream(set())))  # type: ignore[arg-type]
    assert tokens.refused == ["a:t1"]


def test_refusals_not_about_the_token_are_not_reported() -> None:
    """A refusal ``token_refused`` says is not about the token: no refresh, no report."""
    tokens = Tokens()
    with pytest.raises(UpstreamAuthRejected):
        asyncio.run(login_with_refresh(tokens, "a", _upstream(set()),  # type: ignore[arg-type]
                                       token_refused=lambda exc: False))
    assert (tokens.issued, tokens.refused) == (0, [])


def test_a_source_without_the_report_still_works() -> None:
    """A token source without `refreshed_token_refused` gets the same retry and the raise."""
    with pytest.raises(UpstreamAuthRejected):
        asyncio.run(login_with_refresh(PlainTokens(), "a", _upstream(set())))  # type: ignore[arg-type]
    assert asyncio.run(login_with_refresh(PlainTokens(), "a", _upstream({"t1"})))[0] == "t1"  # type: ignore[arg-type]


class Connection:
    """An upstream connection that records whether it was closed."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def _connect_and_log_in(tokens: Tokens, refuse: Callable[[Secret], Exception | None]
                        ) -> tuple[list[Connection], tuple[Connection, str] | BaseException]:
    """Run `connect_and_log_in` against numbered connections; the connections and the outcome."""
    opened: list[Connection] = []

    async def connect() -> Connection:
        opened.append(Connection(len(opened)))
        return opened[-1]

    async def authenticate(connection: Connection, token: Secret) -> str:
        problem = refuse(token)
        if problem is not None:
            raise problem
        return token.reveal()

    try:
        outcome: tuple[Connection, str] | BaseException = asyncio.run(
            connect_and_log_in(tokens, "a", connect, authenticate))  # type: ignore[arg-type]
    except UpstreamAuthRejected as exc:
        outcome = exc
    return opened, outcome


def test_rejected_token_is_refreshed_on_a_fresh_connection_and_the_first_closed() -> None:
    """TokenRejected: the refused connection is closed, a fresh one logs in with the new token."""
    opened, outcome = _connect_and_log_in(
        Tokens(), lambda t: TokenRejected("bad token", account="a") if t.reveal() == "t0" else None)
    assert outcome == (opened[1], "t1") and [c.closed for c in opened] == [True, False]


def test_token_rejected_twice_is_a_plain_refusal() -> None:
    """A token refused again after the refresh: UpstreamAuthRejected (not TokenRejected), both closed."""
    opened, outcome = _connect_and_log_in(Tokens(), lambda t: TokenRejected("bad token", account="a"))
    assert isinstance(outcome, UpstreamAuthRejected) and not isinstance(outcome, TokenRejected)
    assert "also after a forced token refresh" in str(outcome)
    assert [c.closed for c in opened] == [True, True]


def test_other_refusals_get_no_refresh() -> None:
    """A refusal that is not about the token (mailbox in use): raised at once, one connection."""
    tokens = Tokens()
    opened, outcome = _connect_and_log_in(tokens, lambda t: UpstreamAuthRejected("IN-USE", account="a"))
    assert isinstance(outcome, UpstreamAuthRejected) and tokens.issued == 0
    assert [c.closed for c in opened] == [True]

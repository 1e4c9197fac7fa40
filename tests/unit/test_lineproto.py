"""Unit tests for the pure parts of relay/lineproto/ and the IMAP budget rule."""

from __future__ import annotations

import pytest

from relay.config.model import AccountConfig
from relay.errors import (
    AuthorizationNeeded,
    RelayError,
    TokenRefreshFailed,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from relay.imap.session import is_wasted_reply
from relay.lineproto.login import Refusal, classify, token_rejected_fix

ACCOUNT = AccountConfig(name="sales", username="sales-app", password_hash="x", mailbox="s@example.com",
                        credentials="c")


@pytest.mark.parametrize(("reply", "wasted"), [
    (b"a1 OK NOOP completed\r\n", True),
    (b"a2 BAD Unknown command\r\n", True),
    (b"* BAD Invalid or missing tag\r\n", True),
    (b"a3 NO Unsupported authentication mechanism; use PLAIN\r\n", True),
    (b"* CAPABILITY IMAP4rev1 ID\r\na4 OK CAPABILITY completed\r\n", False),
    (b"* ID (\"name\" \"xoauth2-relay\")\r\na5 OK ID completed\r\n", False),
    (b"+ Ready for literal data\r\n", False),
    (b"+ \r\n", False),
])
def test_imap_budget_counts_noop_and_refusals_only(reply: bytes, wasted: bool) -> None:
    """Before login, NOOP and NO/BAD answers spend the command budget; CAPABILITY, ID and
    continuation requests do not."""
    assert is_wasted_reply(reply) is wasted


def test_refusal_text_names_the_account_and_protocol() -> None:
    """The no-mailbox refusal names the client's user name and the protocol, the rest are fixed."""
    assert Refusal.NO_MAILBOX.text(ACCOUNT, "imap") == "Account sales-app has no IMAP mailbox configured"
    assert Refusal.INVALID_CREDENTIALS.text(None, "pop3") == "Invalid credentials"


@pytest.mark.parametrize(("exc", "refusal", "fix_part"), [
    (AuthorizationNeeded("no token"), Refusal.REAUTHORIZE, "run `relay authorize sales`"),
    (TokenRefreshFailed("timeout"), Refusal.OAUTH_FAILING, "OAuth provider is unreachable"),
    (UpstreamUnavailable("refused"), Refusal.UNAVAILABLE, "under accounts.sales.imap"),
    (UpstreamProtocolError("garbage"), Refusal.UPSTREAM_ERROR, "see the error above"),
    (RelayError("other"), Refusal.UPSTREAM_ERROR, "see the error above"),
])
def test_classify_maps_each_failure_to_a_refusal_and_a_fix(exc: Exception, refusal: Refusal,
                                                           fix_part: str) -> None:
    """Every upstream-login failure gets the client's refusal and a fix naming the setting."""
    failure = classify(exc, ACCOUNT, "imap")
    assert failure.refusal is refusal and fix_part in failure.fix


def test_token_rejected_fix_names_what_to_enable_and_the_command() -> None:
    """A token refused after a refresh: the fix says what to enable, then to re-authorize."""
    fix = token_rejected_fix(ACCOUNT, "POP access is enabled for s@example.com")
    assert fix == ("the token was rejected after a refresh: check that POP access is enabled for "
                   "s@example.com, then run `relay authorize sales`")

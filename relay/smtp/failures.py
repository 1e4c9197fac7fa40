"""Pure mapping of upstream and token failures to client replies and to operator log advice.

A client never sees 250 for something the upstream did not accept, and never a 5xx for a failure
that is ours or temporary: those are 4xx so the legacy app keeps the message and retries.
"""

from __future__ import annotations

from relay.config.model import AccountConfig
from relay.errors import (
    AuthorizationNeeded,
    ConfigError,
    RelayError,
    TokenRefreshFailed,
    UpstreamAuthRejected,
    UpstreamBusy,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from relay.explain import explain
from relay.smtp.replies import (
    LOCAL_ERROR,
    TEMP_AUTH_FAILURE,
    UPSTREAM_BUSY,
    UPSTREAM_CONNECTION_LOST,
    UPSTREAM_UNREACHABLE,
)
from relay.smtp.reply import SmtpReply

__all__ = ["LOCAL_ERROR", "TEMP_AUTH_FAILURE", "UPSTREAM_BUSY", "UPSTREAM_CONNECTION_LOST",
           "UPSTREAM_UNREACHABLE", "client_reply_for_upstream", "describe_failure",
           "explain_upstream_reply", "reply_for_error"]


def reply_for_error(error: BaseException, *, connected: bool = False) -> SmtpReply:
    """Return the client reply for a failure; ``connected`` says whether the upstream had answered.

    Always a 4xx: token problems and upstream refusal of our login are 454 4.7.0, every pooled
    upstream session busy 451 4.3.2, an unreachable or failing upstream 451 4.4.x, anything else
    451 4.3.0.
    """
    if isinstance(error, AuthorizationNeeded | TokenRefreshFailed | UpstreamAuthRejected):
        return TEMP_AUTH_FAILURE
    if isinstance(error, UpstreamBusy):
        return UPSTREAM_BUSY
    if isinstance(error, UpstreamUnavailable | UpstreamProtocolError | OSError | TimeoutError):
        return UPSTREAM_CONNECTION_LOST if connected else UPSTREAM_UNREACHABLE
    return LOCAL_ERROR


def client_reply_for_upstream(reply: SmtpReply) -> SmtpReply:
    """Pass an upstream reply to the client, except 421 (which would tell the client that *we*
    close the session): that becomes 451 with the same enhanced code and text."""
    if reply.code == 421:
        return SmtpReply(451, reply.enhanced_code or "4.4.2", reply.text_lines)
    return reply


def explain_upstream_reply(reply_text: str, account: AccountConfig) -> str | None:
    """Return "cause. Fix: ..." for a known provider reply (the table in `relay.explain_table`),
    or None when unknown."""
    entry = explain(reply_text)
    if entry is None:
        return None
    return entry.render(account=account.name, mailbox=account.mailbox, credentials=account.credentials)


def describe_failure(error: BaseException, account: AccountConfig) -> str:
    """One log line for a failure: the account, what happened, the upstream reply and the fix."""
    prefix = f"account {account.name} ({account.mailbox})"
    if isinstance(error, AuthorizationNeeded):
        return f"{prefix}: no usable token: {error}; the account needs `relay authorize {account.name}`"
    if isinstance(error, TokenRefreshFailed):
        return f"{prefix}: token refresh failed (temporary, will be retried): {error}"
    if isinstance(error, UpstreamAuthRejected):
        reply = error.reply.one_line() if error.reply else str(error)
        advice = explain_upstream_reply(reply, account) or (
            f"check the upstream settings and token scopes; if it persists run "
            f"`relay authorize {account.name}`"
        )
        return (f"{prefix}: upstream rejected the XOAUTH2 login even after a token refresh: "
                f"upstream said {reply!r}; {advice}")
    if isinstance(error, UpstreamUnavailable | UpstreamProtocolError):
        where = _endpoint(account)
        reply = f"; upstream said {error.reply.one_line()!r}" if error.reply else ""
        return f"{prefix}: upstream {where} unavailable: {error}{reply}"
    if isinstance(error, ConfigError):
        return f"{prefix}: configuration problem: {error}"
    if isinstance(error, RelayError):
        return f"{prefix}: {error}"
    return f"{prefix}: unexpected {type(error).__name__}: {error}"


def _endpoint(account: AccountConfig) -> str:
    if account.smtp is None:
        return "(none configured)"
    return f"{account.smtp.host}:{account.smtp.port}"

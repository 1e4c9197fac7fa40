"""Pure: Microsoft Graph's HTTP answers as errors, SMTP replies and operator advice.

Graph answers errors as ``{"error": {"code": ..., "message": ...}}`` with the HTTP status; a
throttled request carries ``Retry-After`` (seconds). `graph_error` turns a failed answer into a
`GraphError` whose message names the account and the fix; `send_reply` maps it to what the SMTP
client hears (PROTOCOLS.md 9.1): throttling 451 4.7.0 with the wait, too big 552 5.3.4, permission
550 5.7.1, token refused 454 4.7.0, anything the operator can fix or Graph may heal 4xx.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from relay.errors import GraphError, UpstreamReply
from relay.smtp.reply import SmtpReply

TOO_BIG_CODES = frozenset({"ErrorMessageSizeExceeded", "RequestEntityTooLarge"})
MAILBOX_CODES = frozenset({"MailboxNotEnabledForRESTAPI", "ErrorInvalidUser", "ResourceNotFound",
                           "ErrorNonExistentMailbox", "MailboxNotFound"})


@dataclass(frozen=True, slots=True)
class GraphAnswer:
    """A Graph HTTP answer reduced to what decides the reply."""

    status: int
    code: str | None = None
    message: str = ""
    retry_after_s: float | None = None

    @property
    def throttled(self) -> bool:
        """429, or 503 (Graph is overloaded): wait, then try again."""
        return self.status in (429, 503)

    @property
    def too_big(self) -> bool:
        """The request or message exceeds Graph's limit."""
        return (self.status == 413 or self.code in TOO_BIG_CODES
                or "maximum request length" in self.message.lower())


def parse_retry_after(value: str | None, now_epoch_s: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if now_epoch_s is None:
        return None
    return max(0.0, when.timestamp() - now_epoch_s)


def parse_answer(status: int, headers: Mapping[str, str], body: bytes,
                 now_epoch_s: float | None = None) -> GraphAnswer:
    """Read status, Graph's error code and message, and Retry-After from an HTTP answer."""
    code: str | None = None
    message = ""
    if body:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            message = body[:200].decode("utf-8", "replace").strip()
        else:
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                code = str(error["code"]) if isinstance(error.get("code"), str) else None
                message = str(error.get("message") or "")
    message = " ".join(message.split())[:300]  # one line, bounded: it goes into replies and logs
    lowered = {k.lower(): v for k, v in headers.items()}
    return GraphAnswer(status, code, message, parse_retry_after(lowered.get("retry-after"), now_epoch_s))


def _wait_text(seconds: float | None) -> str:
    if seconds is None:
        return "a few minutes"
    whole = max(1, math.ceil(seconds))
    return f"{whole} second{'s' if whole != 1 else ''}"


def advice(answer: GraphAnswer, account: str, mailbox: str) -> str:
    """What the operator should do about a failed Graph request (one sentence)."""
    if answer.throttled:
        return (f"Microsoft Graph is throttling mailbox {mailbox} (limits: 4 concurrent requests, "
                f"10,000 per 10 minutes per app and mailbox); retry after {_wait_text(answer.retry_after_s)}")
    if answer.status == 401:
        return (f"Microsoft Graph refused the access token even after a refresh (wrong audience or "
                f"revoked): credentials of account '{account}' must yield a graph.microsoft.com "
                f"token; check credentials.*.graph_scopes, or run `relay authorize {account}`")
    if answer.code == "ErrorSendAsDenied":
        return (f"the From header is not a mailbox {mailbox} may send as: use From: {mailbox}, or "
                f"grant {mailbox} Send As on that address (delegated tokens also need Mail.Send.Shared)")
    if answer.status == 403:
        return (f"the app has no Microsoft Graph permission for mailbox {mailbox}: add Mail.Send "
                f"(and Mail.ReadWrite for reading) to the app registration with admin consent "
                f"(application permissions for app-only), and check that no application access "
                f"policy excludes {mailbox} (Test-ApplicationAccessPolicy)")
    if answer.status == 404 or answer.code in MAILBOX_CODES:
        return (f"Microsoft Graph does not know mailbox {mailbox} (no Exchange Online licence, "
                f"on-premises, or still provisioning): check accounts.{account}.mailbox")
    if answer.too_big:
        return ("the message exceeds Microsoft Graph's 4 MB request limit (about 3 MB of MIME "
                f"after base64): send large messages with send_via: smtp for account '{account}'")
    return f"Microsoft Graph answered {answer.status} {answer.code or ''}".rstrip()


def graph_error(answer: GraphAnswer, account: str, mailbox: str, what: str) -> GraphError:
    """A `GraphError` for a failed request: the answer as its reply, the fix in its message."""
    text = answer.message or "(no message)"
    reply = UpstreamReply(f"HTTP {answer.status}", answer.code, text)
    return GraphError(f"account '{account}': {what} failed: HTTP {answer.status} {answer.code or ''} "
                      f"{text}; {advice(answer, account, mailbox)}",
                      status=answer.status, code=answer.code, retry_after_s=answer.retry_after_s,
                      account=account, reply=reply)


def send_reply(error: GraphError) -> SmtpReply:
    """The SMTP client's reply after its final dot for a sendMail that was not accepted."""
    answer = GraphAnswer(error.status, error.code, "", error.retry_after_s)
    if answer.throttled:
        return SmtpReply.make(451, "4.7.0", f"Microsoft Graph is throttling this mailbox, try again "
                              f"in {_wait_text(answer.retry_after_s)}")
    if answer.too_big or error.code in TOO_BIG_CODES:
        return SmtpReply.make(552, "5.3.4", "Message too big for Microsoft Graph (4 MB request limit "
                              "including base64); send it with smaller attachments")
    if error.status == 401:
        return SmtpReply.make(454, "4.7.0", "Temporary authentication failure: Microsoft Graph refused "
                              "the relay's token, the relay operator must check its credentials")
    if error.code == "ErrorSendAsDenied":
        return SmtpReply.make(550, "5.7.1", "The From address is not permitted for this mailbox "
                              "(no Send As right); use the mailbox's own address")
    if error.status == 403:
        return SmtpReply.make(550, "5.7.1", "Microsoft Graph denied sending for this mailbox: the "
                              "app lacks the Mail.Send permission (admin consent) or an access policy")
    if error.status == 404 or error.code in MAILBOX_CODES:
        return SmtpReply.make(451, "4.3.5", "The relay's mailbox is not available in Microsoft Graph, "
                              "the relay operator must check the account's mailbox")
    if error.status == 400 and error.code != "ErrorMimeContentInvalidBase64String":
        return SmtpReply.make(554, "5.6.0", f"Microsoft Graph refused the message: "
                              f"{error.reply.text if error.reply else error.code}")
    return SmtpReply.make(451, "4.4.2", f"Microsoft Graph failed (HTTP {error.status}), try again later")

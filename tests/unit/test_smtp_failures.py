"""Unit tests for relay.smtp.failures and the enhanced codes added to aiosmtpd's replies."""

from __future__ import annotations

import pytest

from relay.config.model import AccountConfig, UpstreamEndpoint
from relay.errors import (
    AuthorizationNeeded,
    ConfigError,
    TokenRefreshFailed,
    UpstreamAuthRejected,
    UpstreamProtocolError,
    UpstreamReply,
    UpstreamUnavailable,
)
from relay.smtp.builtin_replies import add_enhanced_code
from relay.smtp.failures import (
    client_reply_for_upstream,
    describe_failure,
    explain_upstream_reply,
    reply_for_error,
)
from relay.smtp.reply import SmtpReply, parse_reply

ACCOUNT = AccountConfig(
    name="sales", username="sales-app", password_hash=None, mailbox="sales@contoso.com",
    credentials="contoso", smtp=UpstreamEndpoint("smtp.office365.com", 587, "starttls"), pop3=None,
)


@pytest.mark.parametrize(
    ("error", "connected", "code", "enhanced"),
    [
        (AuthorizationNeeded("no refresh token"), False, 454, "4.7.0"),
        (TokenRefreshFailed("HTTP 503"), False, 454, "4.7.0"),
        (UpstreamAuthRejected("535", reply=UpstreamReply("535", "5.7.3", "Authentication unsuccessful")),
         True, 454, "4.7.0"),
        (UpstreamUnavailable("connect refused"), False, 451, "4.4.1"),
        (UpstreamUnavailable("dropped"), True, 451, "4.4.2"),
        (UpstreamProtocolError("garbage"), True, 451, "4.4.2"),
        (TimeoutError(), False, 451, "4.4.1"),
        (ConfigError("ca_file", "cannot load"), False, 451, "4.3.0"),
        (RuntimeError("bug"), True, 451, "4.3.0"),
    ],
)
def test_every_failure_maps_to_a_4xx(error, connected, code, enhanced):
    """Token, auth and upstream failures give the client a temporary reply, never 2xx or 5xx."""
    reply = reply_for_error(error, connected=connected)
    assert (reply.code, reply.enhanced_code) == (code, enhanced)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"550 5.7.60 SMTP; Client does not have permissions to send as this sender\r\n",
         "550 5.7.60 SMTP; Client does not have permissions to send as this sender"),
        (b"250 2.1.5 Recipient OK\r\n", "250 2.1.5 Recipient OK"),
        (b"421 4.3.2 Service not available, closing transmission channel\r\n",
         "451 4.3.2 Service not available, closing transmission channel"),
        (b"421 closing\r\n", "451 4.4.2 closing"),
    ],
)
def test_upstream_replies_pass_through_except_421(wire, expected):
    """The client gets the upstream reply unchanged; a 421 becomes 451 (we do not close)."""
    assert client_reply_for_upstream(parse_reply(wire)).render() == expected


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant",
         "Set-CASMailbox -Identity sales@contoso.com -SmtpClientAuthenticationDisabled $false"),
        ("535 5.7.3 Authentication unsuccessful", "New-ServicePrincipal"),
        ("550 5.7.60 SMTP; Client does not have permissions to send as this sender",
         "accounts.sales.envelope_sender: rewrite"),
        ("554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
         "Add-RecipientPermission"),
        ("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded, concurrent connections",
         "accounts.sales.max_upstream_sessions"),
        ("535-5.7.8 Username and Password not accepted.", "https://mail.google.com/"),
    ],
)
def test_provider_errors_are_explained_with_a_fix(reply, needle):
    """Known provider replies get an explanation naming the fix (and the account/mailbox)."""
    explanation = explain_upstream_reply(reply, ACCOUNT)
    assert explanation is not None and needle in explanation


def test_unknown_replies_have_no_explanation():
    """An unknown reply is not given made-up advice."""
    assert explain_upstream_reply("554 5.0.0 something else", ACCOUNT) is None


def test_describe_failure_names_account_reply_and_fix_in_one_line():
    """The log line for a final auth refusal names the account, the upstream reply and the fix."""
    error = UpstreamAuthRejected("refused", reply=UpstreamReply("535", "5.7.139",
                                                                "SmtpClientAuthentication is disabled"))
    line = describe_failure(error, ACCOUNT)
    assert "\n" not in line
    assert "sales" in line and "535 5.7.139" in line and "SmtpClientAuthenticationDisabled" in line


def test_describe_failure_tells_to_run_authorize():
    """AuthorizationNeeded is logged with the `relay authorize ACCOUNT` fix."""
    assert "`relay authorize sales`" in describe_failure(AuthorizationNeeded("x"), ACCOUNT)


def test_describe_failure_never_contains_a_secret_value():
    """Describing a failure that carries a Secret prints only '***'."""
    from relay.secret import Secret

    line = describe_failure(RuntimeError(Secret("tok-123")), ACCOUNT)
    assert "tok-123" not in line


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("503 Error: nested MAIL command", "503 5.5.1 Error: nested MAIL command"),
        ("500 Command line too long", "500 5.5.2 Line too long"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.2 Syntax: MAIL FROM: <address>"),
        ("552 Error: message size exceeds fixed maximum message size",
         "552 5.3.4 Message size exceeds fixed maximum message size"),
        ("250 OK", "250 2.0.0 OK"),
        ("530 5.7.0 Authentication required", "530 5.7.0 Authentication required"),
        ("550 5.7.60 denied", "550 5.7.60 denied"),
        ("250-SIZE 100", "250-SIZE 100"),
        ("250 HELP", "250 HELP"),
        ("220 host ESMTP", "220 host ESMTP"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_builtin_aiosmtpd_replies_get_enhanced_codes(status, expected):
    """aiosmtpd's own error replies gain RFC 3463 codes; EHLO lines and coded replies stay as is."""
    assert add_enhanced_code(status) == expected


def test_smtp_reply_make_renders_one_line():
    """A locally made reply renders as code, enhanced code, text."""
    assert SmtpReply.make(552, "5.3.4", "too big").render() == "552 5.3.4 too big"

"""The error-explanation table: every entry recognised from a realistic reply, nothing else."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from relay.explain import ExplainedOnce, explain, explain_text, explanation_suffix
from relay.explain_table import EXPLANATIONS
from relay.providers import token_errors

# One realistic sample per entry (texts from PROTOCOLS.md 9.7 and the providers' pages).
SAMPLES = {
    "ms-smtp-auth-disabled-tenant": "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
    "disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. "
    "[X.PROD.OUTLOOK.COM]",
    "ms-smtp-auth-disabled-mailbox": "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
    "disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.",
    "ms-security-defaults": "535 5.7.139 Authentication unsuccessful, user is locked by your organization's "
    "security defaults policy. Contact your administrator.",
    "ms-basic-auth-disabled": "535 5.7.139 Authentication unsuccessful, basic authentication is disabled.",
    "ms-criteria-not-met": "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria "
                           "to "
    "be authenticated successfully. Contact your administrator.",
    "ms-org-config": "535 5.7.139 Authentication unsuccessful, the organization configuration doesn't allow "
    "this authentication request.",
    "ms-federated-sts": "535 5.7.139 Authentication unsuccessful, federated STS service was unreachable.",
    "ms-smtp-auth-5-7-139": "535 5.7.139 Authentication unsuccessful "
                            "[AM0PR01CA0001.eurprd01.prod.exchangelabs.com]",
    "ms-auth-5-7-3": "535 5.7.3 Authentication unsuccessful [BN6PR03CA0021.namprd03.prod.outlook.com]",
    "ms-not-authenticated-5-7-57": "530 5.7.57 Client not authenticated to send mail. [BN1P110CA0052]",
    "ms-send-as-5-7-60": "550 5.7.60 SMTP; Client does not have permissions to send as this sender "
                         "[BY2PR1001MB1094]",
    "ms-send-as-denied": "554 5.2.0 "
                         "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
    "Failed to process message due to a permanent exception with message Cannot submit message.",
    "ms-basic-auth-5-7-30": "550 5.7.30 Basic authentication is not supported for Client Submission.",
    "ms-concurrency-4-3-2": "432 4.3.2 Concurrent connections limit exceeded. Visit "
    "https://aka.ms/concurrent_sending for more information. [Hostname=AM0PR01MB0001]",
    "ms-too-many-recipients": "452 4.5.3 Too many recipients",
    "ms-mailbox-full": "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException."
    "MapiExceptionShutoffQuotaExceeded",
    "ms-submission-quota": "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed",
    "ms-server-busy": "451 4.7.500 Server busy. Please try again later from [1.2.3.4]. (S77719)",
    "ms-ip-blocked-708": "550 5.7.708 Access denied, traffic not accepted from this IP.",
    "ms-tenant-blocked": "550 5.7.750 Service unavailable. Client blocked from sending from unregistered "
                         "domains.",
    "ms-restricted-sender": "550 5.1.8 Access denied, bad outbound sender.",
    "ms-token-expiring": "501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon",
    "ms-pop-logon-failure": "-ERR Logon failure: unknown user name or bad password.",
    "ms-pop-oauth-failure": "-ERR Authentication failure: unknown user name or bad password.",
    "ms-pop-not-connected": "-ERR User is authenticated but not connected.",
    "ms-imap-auth-failed": "A01 NO AUTHENTICATE failed.",
    "g-bad-credentials": "535-5.7.8 Username and Password not accepted. For more information, go to "
    "https://support.google.com/mail/?p=BadCredentials x1-20020a.27 - gsmtp",
    "g-xoauth2-refused": "535-5.7.1 Username and Password not accepted. Learn more at "
                         "https://support.google.com",
    "g-app-password": "534-5.7.9 Application-specific password required. Learn more at "
    "https://support.google.com/mail/?p=InvalidSecondFactor - gsmtp",
    "g-web-login": "534-5.7.14 <https://accounts.google.com/signin/continue?sarp=1> Please log in via your "
                   "web "
    "browser and then try again. https://support.google.com/mail/answer/78754 - gsmtp",
    "g-too-many-logins": "454-4.7.0 Too many login attempts, please try again later. - gsmtp",
    "g-temporary-problem": "421-4.7.0 Temporary System Problem. Try again later (10). - gsmtp",
    "g-unusual-rate": "421-4.7.0 Our system has detected an unusual rate of unsolicited mail originating "
                      "from "
    "your IP address. - gsmtp",
    "g-starttls": "530 5.7.0 Must issue a STARTTLS command first. - gsmtp",
}
SAMPLES.update({  # Microsoft Graph errors as `relay.graph.answers` words them (HTTP status, code, text)
    "graph-send-as-denied": "HTTP 403 ErrorSendAsDenied The user account which was used to submit this "
                            "request does not have the right to send mail on behalf of the specified "
                            "sending account. Cannot submit message.",
    "graph-app-access-policy": "HTTP 403 ErrorAccessDenied Access to OData is disabled.",
    "graph-access-denied": "HTTP 403 ErrorAccessDenied Access is denied. Check credentials and try again.",
    "graph-invalid-audience": "HTTP 401 InvalidAuthenticationToken Access token validation failure. "
                              "Invalid audience.",
    "graph-mailbox-unknown": "HTTP 404 MailboxNotEnabledForRESTAPI REST API is not yet supported for "
                             "this mailbox.",
    "graph-throttled": "HTTP 429 ApplicationThrottled Application is over its MailboxConcurrency limit.",
    "graph-too-big": "HTTP 413 RequestEntityTooLarge The maximum request length supported is 4MB.",
    "graph-bad-base64": "HTTP 400 ErrorMimeContentInvalidBase64String Invalid base64 string for MIME "
                        "content.",
})
for _entry in EXPLANATIONS:
    if _entry.key.startswith("aadsts-"):
        SAMPLES[_entry.key] = (f'{{"error":"invalid_grant","error_description":"AADSTS{_entry.key[7:]}: '
                               'something. Trace ID: 1"}')


def test_every_entry_has_a_sample_and_unique_key() -> None:
    """The table and the samples cover each other exactly; keys are unique."""
    keys = [e.key for e in EXPLANATIONS]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(SAMPLES)


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_entry_recognises_its_reply(key: str) -> None:
    """Each sample reply is explained by its own entry (not shadowed by an earlier, broader one)."""
    found = explain(SAMPLES[key])
    assert found is not None and found.key == key
    assert found.cause and found.fix and found.source


@pytest.mark.parametrize("text", [
    "250 2.0.0 OK queued", "221 2.0.0 Bye", "+OK POP3 server ready", "", "535 5.7.0 something else",
    "upstream not connected yet",
])
def test_unknown_texts_are_not_explained(text: str) -> None:
    """Success replies and unrelated failures match nothing."""
    assert explain(text) is None


def test_every_mapped_aadsts_code_is_in_the_table() -> None:
    """Each AADSTS code the token-error mapping knows has a table entry too."""
    source = Path(token_errors.__file__).read_text(encoding="utf-8")
    codes = set(re.findall(r'"(\d{5,7})"', source))
    assert codes
    for code in codes:
        entry = explain(f"AADSTS{code}: x")
        assert entry is not None and entry.provider == "entra", code


def test_render_fills_account_and_mailbox() -> None:
    """The fix names the account's mailbox and the setting to change."""
    entry = explain(SAMPLES["ms-send-as-5-7-60"])
    assert entry is not None
    text = entry.render(account="sales", mailbox="sales@contoso.com")
    assert "accounts.sales.allowed_senders" in text and "-Trustee sales@contoso.com" in text
    assert "<mbx>" not in text and "needs a fix" in text


def test_explain_text_unknown_echoes_the_raw_text() -> None:
    """An unknown text is called unknown and quoted."""
    answer = explain_text("599 9.9.9 weird thing")
    assert answer.startswith("unknown:") and "599 9.9.9 weird thing" in answer


def test_explanation_suffix_and_once_per_account() -> None:
    """A cause is explained once per account; another account or cause is explained again."""
    once = ExplainedOnce()
    text = SAMPLES["ms-concurrency-4-3-2"]
    assert once.first_time("a", text) is not None
    assert once.first_time("a", text + " again") is None
    assert once.first_time("b", text) is not None
    assert once.first_time("a", SAMPLES["ms-auth-5-7-3"]) is not None
    assert once.first_time("a", "250 OK") is None
    once.forget("a")
    assert once.first_time("a", text) is not None
    assert "temporary" in explanation_suffix(text, account="a")
    assert explanation_suffix("250 OK") == ""


@pytest.mark.parametrize(("text", "code", "needle"), [
    (SAMPLES["ms-smtp-auth-disabled-tenant"], 0, "Set-TransportConfig -SmtpClientAuthenticationDisabled "
                                                 "$false"),
    ("nothing we know", 1, "unknown: no explanation for 'nothing we know'"),
])
def test_relay_explain_command(text: str, code: int, needle: str) -> None:
    """`relay explain TEXT` prints cause and fix (exit 0) or unknown with the raw text (exit 1)."""
    result = subprocess.run([sys.executable, "-m", "relay", "explain", "--mailbox", "m@x.test", text],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == code, result.stderr
    assert needle in result.stdout


def test_relay_explain_reads_stdin() -> None:
    """Without arguments the text comes from stdin (a pasted multi-line log)."""
    result = subprocess.run([sys.executable, "-m", "relay", "explain"],
                            input="foo\n" + SAMPLES["g-app-password"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0 and "2-Step Verification" in result.stdout


def test_relay_explain_list_prints_every_entry_with_its_source() -> None:
    """`relay explain --list` prints each key and source of the table."""
    result = subprocess.run([sys.executable, "-m", "relay", "explain", "--list"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0
    for entry in EXPLANATIONS:
        assert entry.key in result.stdout and f"source: {entry.source}" in result.stdout

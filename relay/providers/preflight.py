"""Permissions preflight: read an access token's claims and a certificate's dates, say what is
wrong before mail fails. Pure functions, used by `relay check`.

Microsoft access tokens are JWTs; their claims (read without checking the signature: this only
explains, it never trusts) show the audience (``aud``), delegated scopes (``scp``), application
permissions (``roles``), the user (``upn``/``unique_name``/``preferred_username``), the app
(``appid``) and its service principal (``oid`` in app-only tokens).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from relay.config.model import AccountConfig, CredentialsConfig

Severity = Literal["error", "warning"]
CERT_WARN_DAYS = 30
GRAPH_AUDIENCES = frozenset({"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000",
                             "https://graph.microsoft.us", "https://dod-graph.microsoft.us",
                             "https://microsoftgraph.chinacloudapi.cn"})
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"  # "Office 365 Exchange Online"


@dataclass(frozen=True)
class Finding:
    """One problem found: ``error`` (mail will fail) or ``warning`` (will fail soon / may fail)."""

    severity: Severity
    text: str


def jwt_claims(token: str) -> dict[str, object] | None:
    """The claims of a JWT (no signature check), or None when the token is not a JWT (Google's)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def exchange_audiences(mail_hosts: tuple[str, ...]) -> frozenset[str]:
    """Audiences Exchange Online accepts for SMTP/POP/IMAP: its app id and the mail resources."""
    hosts = {"outlook.office.com", "outlook.office365.com", *mail_hosts}
    return frozenset({EXCHANGE_APP_ID, *(f"https://{h}" for h in hosts), *(f"https://{h}/" for h in hosts)})


def token_findings(claims: dict[str, object], account: AccountConfig, *,
                   mail_hosts: tuple[str, ...] = ()) -> list[Finding]:
    """What the claims of a Microsoft access token say is wrong for ``account`` (empty: nothing)."""
    name = account.name
    findings: list[Finding] = []
    aud = str(claims.get("aud", ""))
    if aud in GRAPH_AUDIENCES:
        findings.append(Finding("error", f"{name}: the access token is for Microsoft Graph (aud {aud}), "
                                "not Exchange Online: SMTP/POP3 refuse it. Remove Graph scopes (User.Read, "
                                "Mail.Send) from credentials scopes, then `relay authorize " + name + "`"))
        return findings
    if aud and aud not in exchange_audiences(mail_hosts):
        findings.append(Finding("error", f"{name}: the access token's audience is {aud}, not Exchange "
                                "Online (https://outlook.office.com); fix the credentials' scopes"))
    roles = claims.get("roles")
    if "scp" in claims:
        findings.extend(_delegated(claims, account))
    elif isinstance(roles, list) or claims.get("idtyp") == "app":
        granted = [str(r) for r in roles] if isinstance(roles, list) else []
        findings.extend(_app_only(claims, account, granted))
    return findings


def _delegated(claims: dict[str, object], account: AccountConfig) -> list[Finding]:
    name, mbx = account.name, account.mailbox
    scopes = set(str(claims.get("scp", "")).split())
    findings = []
    needed = [("SMTP.Send", account.smtp is not None), ("POP.AccessAsUser.All", account.pop3 is not None),
              ("IMAP.AccessAsUser.All", account.imap is not None)]
    for scope, wanted in needed:
        if wanted and scope not in scopes:
            findings.append(Finding("error", f"{name}: the token lacks the delegated permission {scope} "
                                    f"(it has: {' '.join(sorted(scopes)) or 'none'}). Add it in the app "
                                    "registration (API permissions > Office 365 Exchange Online > "
                                    "Delegated), "
                                    f"grant consent, then `relay authorize {name}`"))
    user = next((str(claims[k]) for k in ("upn", "unique_name", "preferred_username", "email")
                 if isinstance(claims.get(k), str) and "@" in str(claims[k])), None)
    if user and user.lower() != mbx.lower():
        findings.append(Finding("warning", (
            f"{name}: the token is for {user} but mailbox is {mbx}. For a shared mailbox that is right "
            f"only if {user} has FullAccess and Send As on it: Add-MailboxPermission -Identity {mbx} "
            f"-User {user} -AccessRights FullAccess -InheritanceType All; Add-RecipientPermission "
            f"-Identity {mbx} -Trustee {user} -AccessRights SendAs -Confirm:$false. Otherwise run "
            f"`relay authorize {name}` signed in as {mbx}")))
    return findings


def _app_only(claims: dict[str, object], account: AccountConfig, roles: list[str]) -> list[Finding]:
    name, mbx = account.name, account.mailbox
    findings = []
    for role, wanted in (("SMTP.SendAsApp", account.smtp is not None),
                         ("POP.AccessAsApp", account.pop3 is not None),
                         ("IMAP.AccessAsApp", account.imap is not None)):
        if wanted and role not in roles:
            findings.append(Finding("error", f"{name}: the app-only token lacks the application permission "
                                    f"{role} (roles: {', '.join(roles) or 'none'}). Add it "
                                    "(API permissions > Office 365 Exchange Online > Application "
                                    "permissions) and grant admin consent"))
    app_id, sp_id = claims.get("appid") or claims.get("azp"), claims.get("oid")
    if app_id and sp_id:
        findings.append(Finding("warning", (
            f"{name}: app-only access also needs the app registered in Exchange Online and mailbox rights "
            f"(not visible in the token): New-ServicePrincipal -AppId {app_id} -ObjectId {sp_id}; "
            f"Add-MailboxPermission -Identity {mbx} -User {sp_id} -AccessRights FullAccess")))
    return findings


def service_principal_fix(claims: dict[str, object] | None, account: AccountConfig) -> str | None:
    """For an app-only token refused with 5.7.3: the exact commands registering the app in Exchange."""
    if not claims or "scp" in claims or not claims.get("oid"):
        return None
    app_id = claims.get("appid") or claims.get("azp") or "<app id>"
    return ("register the app's service principal in Exchange Online: "
            f"New-ServicePrincipal -AppId {app_id} "
            f"-ObjectId {claims['oid']}; then Add-MailboxPermission -Identity {account.mailbox} "
            f"-User {claims['oid']} -AccessRights FullAccess")


def certificate_findings(credentials: CredentialsConfig, *, now: datetime | None = None,
                         warn_days: int = CERT_WARN_DAYS) -> list[Finding]:
    """Expired certificate (error) or one expiring within ``warn_days`` (warning)."""
    if credentials.client_certificate is None:
        return []
    from relay.errors import ConfigError  # noqa: PLC0415
    from relay.providers.client_assertion import days_until_expiry, load_signing_certificate  # noqa: PLC0415

    path = f"credentials.{credentials.name}.client_certificate"
    try:
        cert = load_signing_certificate(credentials.client_certificate, path)
    except ConfigError as exc:
        return [Finding("error", str(exc))]
    days = days_until_expiry(cert, now or datetime.now(UTC))
    until = cert.not_after.strftime("%Y-%m-%d")
    if days < 0:
        return [Finding("error", f"{path}.cert_file expired on {until}: create a new certificate, "
                        "upload it to the app registration (Certificates & secrets) and point "
                        "cert_file/key_file at it")]
    if days < warn_days:
        return [Finding("warning", f"{path}.cert_file expires on {until} (in {int(days)} days): upload a new "
                        "certificate to the app registration now, then switch cert_file/key_file to it")]
    return []

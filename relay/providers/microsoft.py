"""Microsoft identity platform v2.0 (Exchange Online SMTP AUTH, POP3 and IMAP with XOAUTH2)."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from relay.config.model import OAuthFlow, UpstreamEndpoint
from relay.providers.base import Endpoints, OAuthProvider

LOGIN_HOST = "https://login.microsoftonline.com"
DELEGATED_SCOPES = (
    "https://outlook.office.com/SMTP.Send",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "offline_access",
)
APP_SCOPES = ("https://outlook.office365.com/.default",)


class MicrosoftProvider(OAuthProvider):
    """Exchange Online / Microsoft 365 through login.microsoftonline.com (v2.0 endpoints).

    Delegated scopes target outlook.office.com only: one token request serves one resource, so
    Graph scopes (User.Read) must not be mixed in.
    """

    name: ClassVar[str] = "microsoft"
    requires_tenant: ClassVar[bool] = True
    supported_flows: ClassVar[frozenset[OAuthFlow]] = frozenset(
        {"authorization_code", "device_code", "client_credentials"})
    default_smtp: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint(
        "smtp.office365.com", 587, "starttls")
    default_pop3: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint(
        "outlook.office365.com", 995, "implicit")
    default_imap: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint(
        "outlook.office365.com", 993, "implicit")
    # Exchange Online: at most 3 concurrent SMTP AUTH submissions per mailbox (PROTOCOLS.md 9.3).
    default_max_smtp_sessions: ClassVar[int | None] = 3

    def default_endpoints(self) -> Endpoints:
        """Return the v2.0 endpoints of the configured tenant (no revocation endpoint exists)."""
        tenant = quote(self.credentials.tenant_id or "organizations", safe="")
        base = f"{LOGIN_HOST}/{tenant}/oauth2/v2.0"
        return Endpoints(token_url=f"{base}/token", authorize_url=f"{base}/authorize",
                         device_authorization_url=f"{base}/devicecode")

    def default_scopes(self) -> tuple[str, ...]:
        """SMTP.Send + POP/IMAP.AccessAsUser.All + offline_access (for a refresh token)."""
        return DELEGATED_SCOPES

    def app_scopes(self) -> tuple[str, ...]:
        """App-only: the Exchange Online resource's .default scope (it carries the app's granted
        SMTP.SendAsApp / POP.AccessAsApp / IMAP.AccessAsApp permissions)."""
        return APP_SCOPES

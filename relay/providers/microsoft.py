"""Microsoft identity platform v2.0 (Exchange Online SMTP AUTH, POP3 and IMAP with XOAUTH2), in
the worldwide cloud or a national cloud (``cloud: usgovernment | china``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote

from relay.config.model import CredentialsConfig, MicrosoftCloud, OAuthFlow, UpstreamEndpoint
from relay.providers.base import Endpoints, OAuthProvider, UpstreamDefaults


@dataclass(frozen=True)
class CloudHosts:
    """The hosts of one Microsoft cloud: sign-in, the Exchange resource (scopes) and mail servers."""

    login: str
    resource: str  # the Exchange Online resource delegated scopes are named under
    app_resource: str  # the resource of the app-only ``.default`` scope
    smtp: str
    pop3: str  # POP3 and IMAP share the host
    graph: str = "https://graph.microsoft.com"  # the Microsoft Graph resource and API host


# PROTOCOLS.md 9.6. Login hosts: Microsoft identity platform "national clouds" page (China:
# login.partner.microsoftonline.cn; login.chinacloudapi.cn is the older alias). Mail hosts and
# resources outside the worldwide cloud are community-observed (see README, "National clouds");
# partner.outlook.cn is Microsoft's documented Office 365 API resource for 21Vianet.
CLOUDS: dict[str, CloudHosts] = {
    "global": CloudHosts("login.microsoftonline.com", "https://outlook.office.com",
                         "https://outlook.office365.com", "smtp.office365.com", "outlook.office365.com"),
    "usgovernment": CloudHosts("login.microsoftonline.us", "https://outlook.office365.us",
                               "https://outlook.office365.us", "smtp.office365.us", "outlook.office365.us",
                               "https://graph.microsoft.us"),
    "china": CloudHosts("login.partner.microsoftonline.cn", "https://partner.outlook.cn", "https://partner.outlook.cn",
                        "smtp.partner.outlook.cn", "partner.outlook.cn", "https://microsoftgraph.chinacloudapi.cn"),
}
LOGIN_HOST = f"https://{CLOUDS['global'].login}"
DELEGATED_SCOPES = (
    "https://outlook.office.com/SMTP.Send",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "offline_access",
)
APP_SCOPES = ("https://outlook.office365.com/.default",)
# Graph (send_via/read_via: graph): a separate token from the same grant (PROTOCOLS 9.1).
GRAPH_DELEGATED_SCOPES = (
    "https://graph.microsoft.com/Mail.Send",
    "https://graph.microsoft.com/Mail.ReadWrite",
    "offline_access",
)
GRAPH_APP_SCOPES = ("https://graph.microsoft.com/.default",)


def cloud_hosts(cloud: MicrosoftCloud | str) -> CloudHosts:
    """The hosts of ``cloud`` (the loader only lets known names through)."""
    return CLOUDS[cloud]


class MicrosoftProvider(OAuthProvider):
    """Exchange Online / Microsoft 365 through the v2.0 endpoints of the configured cloud.

    Delegated scopes target the Exchange resource only: one token request serves one resource, so
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

    @classmethod
    def upstream_defaults(cls, credentials: CredentialsConfig) -> UpstreamDefaults:
        """SMTP (587 STARTTLS), POP3 (995 TLS) and IMAP (993 TLS) servers of the worldwide cloud.

        Microsoft documents its mail hosts for the worldwide cloud only; the US Government and
        China hosts are known from working clients, not from Microsoft, so they are no silent
        default there: the operator writes them (`default_server_hint` says which are reported).
        """
        if credentials.cloud != "global":
            return None, None, None
        hosts = cloud_hosts(credentials.cloud)
        return (UpstreamEndpoint(hosts.smtp, 587, "starttls"), UpstreamEndpoint(hosts.pop3, 995, "implicit"),
                UpstreamEndpoint(hosts.pop3, 993, "implicit"))

    @classmethod
    def default_server_hint(cls, credentials: CredentialsConfig, service: str) -> str:
        """For a national cloud: the host working clients report (no Microsoft page lists them)."""
        if credentials.cloud == "global":
            return ""
        hosts = cloud_hosts(credentials.cloud)
        host, port, tls = {"smtp": (hosts.smtp, 587, "starttls"), "pop3": (hosts.pop3, 995, "implicit"),
                           "imap": (hosts.pop3, 993, "implicit")}[service]
        return (f"; Microsoft does not document the {service.upper()} server of cloud "
                f"'{credentials.cloud}' (credentials.{credentials.name}.cloud): working clients report "
                f"{{host: {host}, port: {port}, tls: {tls}}}; check it with your tenant's documentation")

    @property
    def hosts(self) -> CloudHosts:
        """This credentials' cloud."""
        return cloud_hosts(self.credentials.cloud)
    graph_delegated_scopes: ClassVar[tuple[str, ...]] = GRAPH_DELEGATED_SCOPES
    graph_app_scopes: ClassVar[tuple[str, ...]] = GRAPH_APP_SCOPES

    def default_endpoints(self) -> Endpoints:
        """Return the v2.0 endpoints of the configured tenant (no revocation endpoint exists)."""
        tenant = quote(self.credentials.tenant_id or "organizations", safe="")
        base = f"https://{self.hosts.login}/{tenant}/oauth2/v2.0"
        return Endpoints(token_url=f"{base}/token", authorize_url=f"{base}/authorize",
                         device_authorization_url=f"{base}/devicecode")

    def default_scopes(self) -> tuple[str, ...]:
        """SMTP.Send + POP/IMAP.AccessAsUser.All + offline_access (for a refresh token)."""
        resource = self.hosts.resource
        return (f"{resource}/SMTP.Send", f"{resource}/POP.AccessAsUser.All",
                f"{resource}/IMAP.AccessAsUser.All", "offline_access")

    def graph_scopes(self) -> tuple[str, ...]:
        """Graph scopes under the credentials' cloud's Graph resource (YAML ``graph_scopes`` wins)."""
        if self.credentials.graph_scopes is not None:
            return tuple(self.credentials.graph_scopes)
        graph = self.hosts.graph
        if self.credentials.flow == "client_credentials":
            return (f"{graph}/.default",)
        return (f"{graph}/Mail.Send", f"{graph}/Mail.ReadWrite", "offline_access")

    def app_scopes(self) -> tuple[str, ...]:
        """App-only: the Exchange Online resource's .default scope (it carries the app's granted
        SMTP.SendAsApp / POP.AccessAsApp / IMAP.AccessAsApp permissions)."""
        return (f"{self.hosts.app_resource}/.default",)

    def mail_hosts(self) -> tuple[str, ...]:
        """Exchange resource hosts whose tokens SMTP/POP accept (for the permissions preflight)."""
        hosts = self.hosts
        return tuple({h.split("://", 1)[1] for h in (hosts.resource, hosts.app_resource)})

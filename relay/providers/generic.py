"""Any RFC 6749 OAuth 2.0 server: every endpoint and scope comes from the YAML."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from relay.config.model import CredentialsConfig, OAuthFlow
from relay.providers.base import Endpoints, OAuthProvider, TokenResponse
from relay.providers.google import jwt_bearer_token

if TYPE_CHECKING:  # imported where a request is made: a relay that needs none stays smaller
    import httpx


class GenericProvider(OAuthProvider):
    """A standards-following OAuth 2.0 server configured entirely by endpoint URLs and scopes."""

    name: ClassVar[str] = "generic"
    supported_flows: ClassVar[frozenset[OAuthFlow]] = frozenset(
        {"authorization_code", "device_code", "client_credentials", "service_account"})

    @classmethod
    def config_problems(cls, credentials: CredentialsConfig) -> list[tuple[str, str]]:
        """token_url always; authorize_url / device_authorization_url for the flows that use them."""
        problems = super().config_problems(credentials)
        if not credentials.token_url:
            problems.append(("token_url", "provider 'generic' requires token_url (the OAuth token endpoint)"))
        if credentials.flow == "authorization_code" and not credentials.authorize_url:
            problems.append(("authorize_url", "flow 'authorization_code' with provider 'generic' requires "
                             "authorize_url (the OAuth authorization endpoint)"))
        if credentials.flow == "device_code" and not credentials.device_authorization_url:
            problems.append(("device_authorization_url", "flow 'device_code' with provider 'generic' "
                             "requires device_authorization_url (the RFC 8628 endpoint)"))
        if credentials.flow == "service_account" and not credentials.service_account_file:
            problems.append(("service_account_file", "flow 'service_account' requires service_account_file "
                             "(a JSON key with client_email and private_key for the RFC 7523 JWT grant)"))
        return problems

    def default_endpoints(self) -> Endpoints:
        """Everything comes from the credentials (validated at load)."""
        c = self.credentials
        return Endpoints(token_url=c.token_url or "", authorize_url=c.authorize_url,
                         device_authorization_url=c.device_authorization_url, revocation_url=c.revocation_url)

    def default_scopes(self) -> tuple[str, ...]:
        """Generic servers have no default scopes; they come from credentials.scopes."""
        return ()

    async def service_account_token(self, http: httpx.AsyncClient, mailbox: str, *,
                                    account: str | None = None) -> TokenResponse:
        """RFC 7523 JWT bearer grant with a service account key (aud = token_url)."""
        return await jwt_bearer_token(self, http, mailbox, account=account)

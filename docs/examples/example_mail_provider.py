"""A complete custom provider, loaded with ``provider: "example_mail_provider:ExampleMailProvider"``.

Put this module on the relay's Python path (e.g. next to relay.yaml with PYTHONPATH set, or in an
installed package; an installed package can also register it under the entry-point group
``relay.providers`` and use a short name). Only what differs from a standard OAuth 2.0 server needs
code: endpoints, scopes, default upstream servers and extra authorize parameters. Token requests,
refresh, PKCE, device polling and error mapping come from ``OAuthProvider``.
"""

from __future__ import annotations

from typing import ClassVar

from relay.config.model import CredentialsConfig, OAuthFlow, UpstreamEndpoint
from relay.providers.base import Endpoints, OAuthProvider


class ExampleMailProvider(OAuthProvider):
    """An OAuth 2.0 mail service with fixed endpoints and per-region hosts."""

    name: ClassVar[str] = "example-mail"
    requires_tenant: ClassVar[bool] = False
    supported_flows: ClassVar[frozenset[OAuthFlow]] = frozenset({"authorization_code", "device_code"})
    default_smtp: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint(
        "smtp.example-mail.net", 465, "implicit")
    default_pop3: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint(
        "pop.example-mail.net", 995, "implicit")
    # Added to the authorization URL (e.g. to always get a refresh token).
    extra_authorize_params: ClassVar[dict[str, str]] = {"access_type": "offline"}

    @classmethod
    def config_problems(cls, credentials: CredentialsConfig) -> list[tuple[str, str]]:
        """Require the `region` option, reported as credentials.NAME.options.region."""
        problems = super().config_problems(credentials)
        if credentials.options.get("region") not in ("eu", "us"):
            problems.append(("options.region", "set options.region to 'eu' or 'us'"))
        return problems

    def default_endpoints(self) -> Endpoints:
        """The region's endpoints (YAML token_url/authorize_url still override them)."""
        base = f"https://auth-{self.credentials.options.get('region', 'eu')}.example-mail.net/oauth2"
        return Endpoints(token_url=f"{base}/token", authorize_url=f"{base}/authorize",
                         device_authorization_url=f"{base}/device", revocation_url=f"{base}/revoke")

    def default_scopes(self) -> tuple[str, ...]:
        """Send and read mail, plus a refresh token."""
        return ("mail.submission", "mail.pop3", "offline_access")

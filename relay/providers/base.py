"""The interface every OAuth provider implements (built-in or the user's own class).

CONTRACT (fixed; the OAuth-engine work fills in the grant methods below it):
class attributes ``name``, ``requires_tenant``, ``supported_flows``, ``default_smtp``,
``default_pop3``; the constructor ``Provider(credentials: CredentialsConfig)``; and the
classmethod ``config_problems(credentials) -> list[(field, message)]`` used by the config loader
to report provider-specific mistakes with their YAML path.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar

from relay.config.model import CredentialsConfig, OAuthFlow, UpstreamEndpoint


class OAuthProvider(ABC):
    """One OAuth 2.0 mail provider: its endpoints, scopes, grants and upstream defaults."""

    name: ClassVar[str]
    requires_tenant: ClassVar[bool] = False
    supported_flows: ClassVar[frozenset[OAuthFlow]] = frozenset({"authorization_code"})
    default_smtp: ClassVar[UpstreamEndpoint | None] = None
    default_pop3: ClassVar[UpstreamEndpoint | None] = None

    def __init__(self, credentials: CredentialsConfig) -> None:
        self.credentials = credentials

    @classmethod
    def config_problems(cls, credentials: CredentialsConfig) -> list[tuple[str, str]]:
        """Return provider-specific problems as (field, message); empty when fine."""
        problems: list[tuple[str, str]] = []
        if cls.requires_tenant and not credentials.tenant_id:
            problems.append(
                ("tenant_id", f"provider '{cls.name}' requires tenant_id (a tenant GUID, a domain, "
                 "or 'organizations'/'common')")
            )
        if credentials.flow not in cls.supported_flows:
            known = ", ".join(sorted(cls.supported_flows))
            problems.append(
                ("flow", f"provider '{cls.name}' does not support flow '{credentials.flow}' "
                 f"(supported: {known})")
            )
        return problems

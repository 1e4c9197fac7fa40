"""Google (Gmail SMTP, POP3 and IMAP with XOAUTH2), including Workspace service accounts."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.config.model import CredentialsConfig, OAuthFlow, UpstreamEndpoint
from relay.errors import ConfigError
from relay.providers.base import (
    DeviceAuthorization,
    Endpoints,
    OAuthProvider,
    TokenResponse,
    UnsupportedGrant,
)
from relay.providers.token_errors import map_token_error

if TYPE_CHECKING:
    import httpx
from relay.secret import Secret

GMAIL_SCOPE = "https://mail.google.com/"
TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 - an endpoint URL
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_NOT_SUPPORTED = (
    "Google's device flow does not allow the Gmail scope (https://mail.google.com/); use flow "
    "authorization_code and `relay authorize ACCOUNT` (loopback redirect) or `relay authorize ACCOUNT "
    "--manual` on a machine without a browser"
)


@dataclass(frozen=True)
class ServiceAccountKey:
    """The parts of a Google service account JSON key file the JWT grant needs."""

    client_email: str
    private_key: Secret
    token_uri: str = TOKEN_URL


def load_service_account_key(path: Path) -> ServiceAccountKey:
    """Read a service account JSON key; ConfigError naming the file when it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServiceAccountKey(client_email=str(data["client_email"]),
                                 private_key=Secret(str(data["private_key"])),
                                 token_uri=str(data.get("token_uri") or TOKEN_URL))
    except OSError as exc:
        raise ConfigError("", f"cannot read the service account key file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError("", f"{path} is not a Google service account JSON key (needs client_email and "
                          "private_key); download a new key for the service account") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def build_service_account_jwt(key: ServiceAccountKey, subject: str, scope: str, audience: str, *,
                              issued_at: int, lifetime_s: int = 3600) -> Secret:
    """Return a signed RS256 JWT assertion (iss, sub, scope, aud, iat, exp <= iat + 3600)."""
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": key.client_email, "sub": subject, "scope": scope, "aud": audience,
              "iat": issued_at, "exp": issued_at + min(lifetime_s, 3600)}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    try:
        private_key = serialization.load_pem_private_key(key.private_key.reveal().encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError("", f"the private key of service account {key.client_email} cannot be read; "
                          "download a new JSON key") from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ConfigError("", f"the private key of service account {key.client_email} is not an RSA key")
    signature = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return Secret(f"{signing_input}.{_b64url(signature)}")


async def jwt_bearer_token(provider: OAuthProvider, http: httpx.AsyncClient, mailbox: str, *,
                           account: str | None, now_s: float | None = None) -> TokenResponse:
    """Run the RFC 7523 JWT bearer grant with the credentials' service account key file."""
    path = provider.credentials.service_account_file
    if path is None:
        raise ConfigError(f"credentials.{provider.credentials.name}.service_account_file",
                          "flow 'service_account' needs service_account_file (the JSON key)")
    key = load_service_account_key(path)
    audience = provider.credentials.token_url or key.token_uri
    assertion = build_service_account_jwt(key, mailbox, " ".join(provider.scopes()), audience,
                                          issued_at=int(now_s if now_s is not None else time.time()))
    status, payload = await provider._post(http, provider.endpoints().token_url,
                                           {"grant_type": JWT_BEARER_GRANT, "assertion": assertion.reveal()},
                                           account=account)
    if status != 200:
        raise map_token_error(status, payload, credentials=provider.credentials.name, account=account)
    return provider.parse_token_response(payload, account=account)


class GoogleProvider(OAuthProvider):
    """Gmail / Google Workspace. Refresh tokens are not rotated; ask offline access with consent."""

    name: ClassVar[str] = "google"
    supported_flows: ClassVar[frozenset[OAuthFlow]] = frozenset({"authorization_code", "service_account"})
    default_smtp: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint("smtp.gmail.com", 587, "starttls")
    default_pop3: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint("pop.gmail.com", 995, "implicit")
    default_imap: ClassVar[UpstreamEndpoint | None] = UpstreamEndpoint("imap.gmail.com", 993, "implicit")
    # Without these Google returns no refresh token (or only on the very first consent).
    extra_authorize_params: ClassVar[dict[str, str]] = {"access_type": "offline", "prompt": "consent"}

    @classmethod
    def config_problems(cls, credentials: CredentialsConfig) -> list[tuple[str, str]]:
        """Device code is refused with the reason; service_account needs its key file."""
        if credentials.flow == "device_code":
            return [("flow", DEVICE_NOT_SUPPORTED)]
        problems = super().config_problems(credentials)
        if credentials.flow == "service_account" and not credentials.service_account_file:
            problems.append(("service_account_file", "flow 'service_account' requires service_account_file "
                             "(the service account's JSON key, with domain-wide delegation for the Gmail "
                             "scope)"))
        return problems

    def default_endpoints(self) -> Endpoints:
        """Google's documented OAuth endpoints."""
        return Endpoints(token_url=TOKEN_URL, authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
                         device_authorization_url="https://oauth2.googleapis.com/device/code",
                         revocation_url="https://oauth2.googleapis.com/revoke")

    def default_scopes(self) -> tuple[str, ...]:
        """Full Gmail access, the only scope that allows SMTP/POP3/IMAP with XOAUTH2."""
        return (GMAIL_SCOPE,)

    async def start_device_authorization(self, http: httpx.AsyncClient, *,
                                         account: str | None = None) -> DeviceAuthorization:
        """Refused unless the scopes were overridden: Google's device flow excludes the Gmail scope."""
        if GMAIL_SCOPE in self.scopes():
            raise UnsupportedGrant(DEVICE_NOT_SUPPORTED, account=account)
        return await super().start_device_authorization(http, account=account)

    async def service_account_token(self, http: httpx.AsyncClient, mailbox: str, *,
                                    account: str | None = None) -> TokenResponse:
        """Domain-wide delegation: a JWT signed by the service account, acting as ``mailbox``."""
        return await jwt_bearer_token(self, http, mailbox, account=account)

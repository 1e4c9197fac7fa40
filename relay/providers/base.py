"""The interface every OAuth provider implements (built-in or the user's own class).

A provider has the class attributes ``name``, ``requires_tenant``, ``supported_flows``, ``default_smtp``,
``default_pop3``, optional ``default_imap``; the constructor
``Provider(credentials: CredentialsConfig)``; and the classmethod
``config_problems(credentials) -> list[(field, message)]`` used by the config loader
to report provider-specific mistakes with their YAML path.

Grants: the base class implements RFC 6749 / 7636 / 8628 against the endpoints a subclass
returns from ``endpoints()``; a provider overrides what differs and raises
``UnsupportedGrant`` for what it cannot do. Every HTTP failure is translated into the relay's
error tree by the pure :func:`relay.providers.token_errors.map_token_error`.
"""

from __future__ import annotations

import json
from abc import ABC
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlencode, urlsplit

from relay.config.model import CredentialsConfig, OAuthFlow, UpstreamEndpoint
from relay.errors import AuthorizeDenied, AuthorizeTimeout, OAuthError, TokenRefreshFailed
from relay.providers.answers import (
    DEVICE_CODE_GRANT,
    DeviceAuthorization,
    DevicePending,
    Endpoints,
    TokenResponse,
    clamp_lifetime,
)
from relay.providers.proxy import proxied_client, proxy_refused
from relay.providers.token_errors import map_token_error
from relay.secret import Secret

if TYPE_CHECKING:
    # httpx (~4 MiB resident) is imported by the first token request, not at start-up: a relay
    # whose tokens are still valid after a restart does not need it yet.
    import httpx

    from relay.providers.client_assertion import SigningCertificate

# Re-exported: custom providers import these value types from here (the public API).
__all__ = ["DEVICE_CODE_GRANT", "DeviceAuthorization", "DevicePending", "Endpoints", "OAuthProvider",
           "TokenResponse", "UnsupportedGrant", "UpstreamDefaults"]

UpstreamDefaults = tuple[UpstreamEndpoint | None, UpstreamEndpoint | None, UpstreamEndpoint | None]
"""A provider's default (SMTP, POP3, IMAP) servers."""


class UnsupportedGrant(OAuthError):
    """The provider does not support this grant (a configuration problem, not transient)."""

    exit_code = 2


class OAuthProvider(ABC):
    """One OAuth 2.0 mail provider: its endpoints, scopes, grants and upstream defaults."""

    name: ClassVar[str]
    requires_tenant: ClassVar[bool] = False
    supported_flows: ClassVar[frozenset[OAuthFlow]] = frozenset({"authorization_code"})
    default_smtp: ClassVar[UpstreamEndpoint | None] = None
    default_pop3: ClassVar[UpstreamEndpoint | None] = None
    default_imap: ClassVar[UpstreamEndpoint | None] = None
    # Documented per-mailbox caps on concurrent upstream sessions (None: none documented); the
    # default of accounts.NAME.max_upstream_sessions / max_upstream_pop3_sessions.
    default_max_smtp_sessions: ClassVar[int | None] = None
    default_max_pop3_sessions: ClassVar[int | None] = None
    # Scopes of a token for Microsoft Graph from the same grant (empty: the provider has no Graph).
    graph_delegated_scopes: ClassVar[tuple[str, ...]] = ()
    graph_app_scopes: ClassVar[tuple[str, ...]] = ()
    # Extra query parameters added to the authorization URL (e.g. Google's access_type=offline).
    extra_authorize_params: ClassVar[dict[str, str]] = {}

    def __init__(self, credentials: CredentialsConfig) -> None:
        self.credentials = credentials
        self._signing_cert: SigningCertificate | None = None

    @classmethod
    def upstream_defaults(cls, credentials: CredentialsConfig) -> UpstreamDefaults:
        """Default (SMTP, POP3, IMAP) servers for accounts using ``credentials`` (e.g. per cloud)."""
        return cls.default_smtp, cls.default_pop3, cls.default_imap

    @classmethod
    def default_server_hint(cls, credentials: CredentialsConfig, service: str) -> str:
        """Appended to "no default server" for ``service`` (smtp, pop3, imap): what to write."""
        return ""

    @classmethod
    def config_problems(cls, credentials: CredentialsConfig) -> list[tuple[str, str]]:
        """Return provider-specific problems as (field, message); empty when fine."""
        problems: list[tuple[str, str]] = []
        if cls.requires_tenant and not credentials.tenant_id:
            problems.append(
                ("tenant_id", f"provider '{cls.name}' requires tenant_id (a tenant GUID, a domain, "
                 "or 'organizations'/'common')")
            )
        if credentials.client_certificate is not None:
            from relay.providers.client_assertion import certificate_problems  # noqa: PLC0415

            problems.extend(certificate_problems(credentials))
        if credentials.flow not in cls.supported_flows:
            known = ", ".join(sorted(cls.supported_flows))
            problems.append(
                ("flow", f"provider '{cls.name}' does not support flow '{credentials.flow}' "
                 f"(supported: {known})")
            )
        return problems

    # --- what a provider describes ---------------------------------------------------------------

    def default_endpoints(self) -> Endpoints:
        """Return the provider's built-in endpoints (subclasses override)."""
        raise UnsupportedGrant(f"provider '{self.name}' defines no endpoints; set credentials."
                               f"{self.credentials.name}.token_url")

    def endpoints(self) -> Endpoints:
        """Return the endpoints, with the overrides from the credentials applied."""
        c = self.credentials
        try:
            base = self.default_endpoints()
        except UnsupportedGrant:
            if not c.token_url:
                raise
            base = Endpoints(token_url=c.token_url)
        return Endpoints(
            token_url=c.token_url or base.token_url,
            authorize_url=c.authorize_url or base.authorize_url,
            device_authorization_url=c.device_authorization_url or base.device_authorization_url,
            revocation_url=c.revocation_url or base.revocation_url,
        )

    def default_scopes(self) -> tuple[str, ...]:
        """Return the delegated scopes for SMTP + POP3 (subclasses override)."""
        return ()

    def app_scopes(self) -> tuple[str, ...]:
        """Return the scopes for app-only grants (client credentials, service account)."""
        return self.default_scopes()

    def scopes(self) -> tuple[str, ...]:
        """Return the scopes to request for the configured flow (YAML ``scopes`` wins)."""
        if self.credentials.scopes is not None:
            return tuple(self.credentials.scopes)
        if self.credentials.flow in ("client_credentials", "service_account"):
            return self.app_scopes()
        return self.default_scopes()

    def graph_scopes(self) -> tuple[str, ...]:
        """The scopes of a Graph token for the configured flow (YAML ``graph_scopes`` wins)."""
        if self.credentials.graph_scopes is not None:
            return tuple(self.credentials.graph_scopes)
        if self.credentials.flow in ("client_credentials", "service_account"):
            return self.graph_app_scopes
        return self.graph_delegated_scopes

    def needs_authorize_step(self) -> bool:
        """True when tokens come from a one-time interactive `relay authorize`."""
        return self.credentials.flow in ("authorization_code", "device_code")

    # --- authorization code + PKCE ---------------------------------------------------------------

    def authorization_url(self, redirect_uri: str, state: str, code_challenge: str,
                          login_hint: str | None = None) -> str:
        """Return the URL the user opens to consent (PKCE S256, ``state`` against CSRF)."""
        url = self.endpoints().authorize_url
        if not url:
            raise UnsupportedGrant(
                f"credentials '{self.credentials.name}': provider '{self.name}' has no authorization "
                f"endpoint; set credentials.{self.credentials.name}.authorize_url"
            )
        params = {
            "client_id": self.credentials.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes()),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            **self.extra_authorize_params,
        }
        if login_hint:
            params["login_hint"] = login_hint
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}{urlencode(params)}"

    async def exchange_code(self, http: httpx.AsyncClient, code: str, redirect_uri: str,
                            code_verifier: str, *, account: str | None = None) -> TokenResponse:
        """Trade an authorization code for tokens."""
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": code_verifier, "scope": " ".join(self.scopes())}
        return await self.token_request(http, data, account=account)

    async def refresh(self, http: httpx.AsyncClient, refresh_token: Secret, *,
                      account: str | None = None, scopes: tuple[str, ...] | None = None) -> TokenResponse:
        """Use a refresh token for a new access token (and maybe a rotated refresh token);
        ``scopes`` asks for another resource's token from the same grant (e.g. Graph)."""
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal(),
                "scope": " ".join(scopes if scopes is not None else self.scopes())}
        return await self.token_request(http, data, account=account)

    # --- device code (RFC 8628) ------------------------------------------------------------------

    async def start_device_authorization(self, http: httpx.AsyncClient, *,
                                         account: str | None = None) -> DeviceAuthorization:
        """Ask for a device code and user code."""
        url = self.endpoints().device_authorization_url
        if not url:
            raise UnsupportedGrant(
                f"credentials '{self.credentials.name}': provider '{self.name}' has no device "
                f"authorization endpoint; set credentials.{self.credentials.name}.device_authorization_url",
                account=account,
            )
        body = {"client_id": self.credentials.client_id, "scope": " ".join(self.scopes())}
        status, payload = await self._post(http, url, body, account=account)
        if status != 200:
            raise map_token_error(status, payload, credentials=self.credentials.name, account=account)
        if not isinstance(payload, dict):
            payload = {}
        try:
            uri = payload.get("verification_uri") or payload["verification_url"]
            complete = payload.get("verification_uri_complete")
            return DeviceAuthorization(
                device_code=Secret(str(payload["device_code"])),
                user_code=str(payload["user_code"]),
                verification_uri=str(uri),
                expires_in_s=clamp_lifetime(payload.get("expires_in", 900), 900),
                interval_s=max(1, int(payload.get("interval", 5))),
                verification_uri_complete=str(complete) if complete else None,
            )
        except (KeyError, TypeError, ValueError):
            raise TokenRefreshFailed(
                f"credentials '{self.credentials.name}': the device authorization answer lacks "
                "device_code/user_code/verification_uri", account=account) from None

    async def poll_device_token(self, http: httpx.AsyncClient, device: DeviceAuthorization, *,
                                account: str | None = None) -> TokenResponse | DevicePending:
        """Poll once: tokens, or DevicePending while the user has not approved yet."""
        data = {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code.reveal()}
        status, payload = await self._post(http, self.endpoints().token_url,
                                           self._with_client(data), account=account)
        if status == 200:
            return self.parse_token_response(payload, account=account)
        error = payload.get("error") if isinstance(payload, dict) else None
        if status == 428 or error == "authorization_pending":
            return DevicePending()
        if error == "slow_down":
            return DevicePending(slow_down=True)
        if error == "access_denied":
            raise AuthorizeDenied("the sign-in was declined (access_denied); nothing was stored",
                                     account=account, provider_error="access_denied")
        if error == "expired_token":
            raise AuthorizeTimeout("the device code expired before the sign-in was completed; "
                                     "run the command again", account=account, provider_error="expired_token")
        raise map_token_error(status, payload, credentials=self.credentials.name, account=account)

    # --- app-only grants -------------------------------------------------------------------------

    async def client_credentials(self, http: httpx.AsyncClient, mailbox: str, *,
                                 account: str | None = None,
                                 scopes: tuple[str, ...] | None = None) -> TokenResponse:
        """Get an app-only token (RFC 6749 4.4); ``mailbox`` is the XOAUTH2 user, unused here."""
        if "client_credentials" not in self.supported_flows:
            raise UnsupportedGrant(f"provider '{self.name}' does not support the client_credentials flow",
                                   account=account)
        return await self.token_request(
            http, {"grant_type": "client_credentials",
                   "scope": " ".join(scopes if scopes is not None else self.scopes())}, account=account)

    async def service_account_token(self, http: httpx.AsyncClient, mailbox: str, *,
                                    account: str | None = None) -> TokenResponse:
        """Get a token acting as ``mailbox`` with a service account (Google overrides this)."""
        raise UnsupportedGrant(f"provider '{self.name}' does not support the service_account flow; "
                               f"use authorization_code for credentials '{self.credentials.name}'",
                               account=account)

    async def fetch_app_token(self, http: httpx.AsyncClient, mailbox: str, *,
                              account: str | None = None,
                              scopes: tuple[str, ...] | None = None) -> TokenResponse:
        """Get a token for an on-demand flow (client_credentials or service_account); ``scopes``
        asks for another resource (client_credentials only)."""
        if self.credentials.flow == "service_account":
            return await self.service_account_token(http, mailbox, account=account)
        return await self.client_credentials(http, mailbox, account=account, scopes=scopes)

    async def revoke(self, http: httpx.AsyncClient, token: Secret) -> bool:
        """Best effort RFC 7009 revocation; returns False when there is no endpoint or it failed."""
        url = self.endpoints().revocation_url
        if not url:
            return False
        try:
            status, _ = await self._post(http, url, self._with_client({"token": token.reveal()}))
        except OAuthError:
            return False
        return status == 200

    # --- HTTP plumbing ---------------------------------------------------------------------------

    def _with_client(self, data: dict[str, str]) -> dict[str, str]:
        """Add client authentication: a fresh certificate-signed client assertion (private_key_jwt)
        when ``client_certificate`` is set, else client_secret_post; public clients send only
        client_id."""
        out = {"client_id": self.credentials.client_id, **data}
        cert_config = self.credentials.client_certificate
        if cert_config is not None:
            from relay.providers.client_assertion import (  # noqa: PLC0415 - only for certificate credentials
                CLIENT_ASSERTION_TYPE,
                build_client_assertion,
                load_signing_certificate,
            )

            if self._signing_cert is None:
                self._signing_cert = load_signing_certificate(
                    cert_config, f"credentials.{self.credentials.name}.client_certificate")
            assertion = build_client_assertion(self._signing_cert, client_id=self.credentials.client_id,
                                               audience=self.endpoints().token_url,
                                               algorithm=cert_config.algorithm)
            out["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            out["client_assertion"] = assertion.reveal()
        elif self.credentials.client_secret:
            out["client_secret"] = self.credentials.client_secret.reveal()
        return out

    async def token_request(self, http: httpx.AsyncClient, data: dict[str, str], *,
                            account: str | None = None) -> TokenResponse:
        """POST a grant to the token endpoint; translate every failure into the error tree."""
        if not data.get("scope"):
            data = {k: v for k, v in data.items() if k != "scope"}
        status, payload = await self._post(http, self.endpoints().token_url, self._with_client(data),
                                           account=account)
        if status != 200:
            raise map_token_error(status, payload, credentials=self.credentials.name, account=account)
        return self.parse_token_response(payload, account=account)

    def parse_token_response(self, payload: object, *, account: str | None = None) -> TokenResponse:
        """Turn an RFC 6749 5.1 JSON body into a TokenResponse (TokenRefreshFailed when malformed)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
            raise TokenRefreshFailed(
                f"credentials '{self.credentials.name}': the token endpoint answered 200 without an "
                "access_token", account=account)
        expires_in = clamp_lifetime(payload.get("expires_in", 3600), 3600)  # Infinity, 1e12 ...
        refresh = payload.get("refresh_token")
        return TokenResponse(
            access_token=Secret(payload["access_token"]),
            expires_in_s=expires_in,
            refresh_token=Secret(refresh) if isinstance(refresh, str) and refresh else None,
            scope=payload.get("scope") if isinstance(payload.get("scope"), str) else None,
            token_type=str(payload.get("token_type", "Bearer")),
        )

    async def _post(self, http: httpx.AsyncClient, url: str, data: dict[str, str], *,
                    account: str | None = None) -> tuple[int, object]:
        """POST a form; return (status, parsed JSON or None). Network failures -> TokenRefreshFailed."""
        import httpx  # noqa: PLC0415 - see the TYPE_CHECKING import above

        who = f"account '{account}'" if account else f"credentials '{self.credentials.name}'"
        try:
            if self.credentials.proxy is not None:
                async with proxied_client(self.credentials.proxy, http) as client:
                    response = await client.post(url, data=data, headers={"Accept": "application/json"})
            else:  # the shared client: HTTPS_PROXY / NO_PROXY from the environment apply
                response = await http.post(url, data=data, headers={"Accept": "application/json"})
        except httpx.ProxyError as exc:
            raise proxy_refused(exc, self.credentials, who, account) from None
        except httpx.TimeoutException:
            raise TokenRefreshFailed(f"{who}: the OAuth endpoint {_host(url)} timed out",
                                     account=account) from None
        except httpx.HTTPError as exc:
            via = (f" through the proxy of credentials.{self.credentials.name}.proxy"
                   if self.credentials.proxy is not None else "")
            raise TokenRefreshFailed(f"{who}: cannot reach the OAuth endpoint {_host(url)}{via} "
                                     f"({type(exc).__name__})", account=account) from None
        if response.status_code == 407:  # a plain-http request answered by the proxy itself
            raise proxy_refused(Exception("407 Proxy Authentication Required"), self.credentials, who,
                                account)
        try:
            payload: object = response.json() if response.content else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        return response.status_code, payload


def _host(url: str) -> str:
    """Return scheme://host of a URL for messages (never a query string)."""
    parsed = urlsplit(url)
    try:
        port = f":{parsed.port}" if parsed.port else ""
    except ValueError:  # a port that is not a number: show the host only
        port = ""
    return f"{parsed.scheme}://{parsed.hostname or ''}{port}"

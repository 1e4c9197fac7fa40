"""`SandboxOAuthProvider`: an OAuth 2.0 authorization server on loopback for tests and the demo.

Endpoints (served by `relay.sandbox.oauth_http`): GET /authorize (auto-approves, PKCE S256),
POST /token (authorization_code, refresh_token, client_credentials, device_code, jwt-bearer),
POST /device_authorization, POST /revoke, POST /introspect (Dovecot's oauth2 passdb,
PROTOCOLS.md section 8).
The upstream servers call `validate_access_token` in-process. Fault switches are plain attributes
or methods, safe to flip from any thread.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

from relay.sandbox.oauth_assertions import ClientAssertions
from relay.sandbox.oauth_grants import ANY_MAILBOX, Client, GrantSettings, OAuthGrants
from relay.sandbox.oauth_http import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REDIRECT_URIS,
    DEFAULT_SCOPE,
    OAuthHttpServer,
)

__all__ = ["ANY_MAILBOX", "DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "DEFAULT_SCOPE",
           "SandboxOAuthProvider"]


class SandboxOAuthProvider(OAuthHttpServer):
    """A loopback OAuth 2.0 server with in-process token validation and fault switches.

    The default client ``sandbox-client`` works as a public client (no secret) and as a
    confidential one (secret ``sandbox-secret``; required for client_credentials). The HTTP
    endpoints are in `relay.sandbox.oauth_http`; this class adds the in-process API.
    """

    name = "oauth"

    def __init__(self, *, port: int = 0, token_lifetime_s: int = 3600,
                 default_user: str = "user@sandbox.test", clock: Callable[[], float] = time.time,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(port=port, ssl_context=ssl_context)
        self.scheme = "https" if ssl_context is not None else "http"  # https: like real providers
        self.settings = GrantSettings(token_lifetime_s=token_lifetime_s, default_user=default_user)
        self.grants = OAuthGrants(self.settings, clock)
        self.grants.add_client(Client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_REDIRECT_URIS,
                                      secret_optional=True))
        self.assertions = ClientAssertions(clock)
        self.deny_consent = False
        self.hang_token_endpoint = False
        self._fail_next: list[int] = []
        self._invalid_json_next = 0

    # --- settings passthrough --------------------------------------------------------------------

    @property
    def token_lifetime_s(self) -> int:
        """Lifetime of new access tokens."""
        return self.settings.token_lifetime_s

    @token_lifetime_s.setter
    def token_lifetime_s(self, value: int) -> None:
        self.settings.token_lifetime_s = value

    @property
    def default_user(self) -> str:
        """Mailbox authorized when /authorize has no login_hint (and for auto-approved devices)."""
        return self.settings.default_user

    @default_user.setter
    def default_user(self, value: str) -> None:
        self.settings.default_user = value

    @property
    def rotate_refresh_tokens(self) -> bool:
        """Each refresh returns a new refresh token and invalidates the old one."""
        return self.settings.rotate_refresh_tokens

    @rotate_refresh_tokens.setter
    def rotate_refresh_tokens(self, value: bool) -> None:
        self.settings.rotate_refresh_tokens = value

    @property
    def force_invalid_grant(self) -> bool:
        """Every refresh_token grant fails with invalid_grant."""
        return self.settings.force_invalid_grant

    @force_invalid_grant.setter
    def force_invalid_grant(self, value: bool) -> None:
        self.settings.force_invalid_grant = value

    @property
    def issue_expired_tokens(self) -> bool:
        """Clock skew: responses say expires_in = ``settings.expired_expires_in`` (default -60)
        while the tokens stay valid at the upstreams for token_lifetime_s."""
        return self.settings.issue_expired_tokens

    @issue_expired_tokens.setter
    def issue_expired_tokens(self, value: bool) -> None:
        self.settings.issue_expired_tokens = value

    # --- in-process API ---------------------------------------------------------------------------

    def add_client(self, client_id: str, client_secret: str | None = None,
                   redirect_uris: list[str] | tuple[str, ...] | None = None) -> None:
        """Register a client: confidential with a secret (then always required), else public."""
        uris = tuple(redirect_uris or DEFAULT_REDIRECT_URIS)
        self.grants.add_client(Client(client_id, client_secret, uris))

    def register_service_account(self, iss: str, public_key_pem: bytes | str) -> None:
        """Accept RS256 jwt-bearer assertions from ``iss`` signed by this key."""
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        with self.grants.lock:
            self.grants.service_accounts[iss] = pem

    def register_client_certificate(self, client_id: str, cert_pem: bytes | str) -> None:
        """Accept certificate-signed client assertions from ``client_id`` (Microsoft-style)."""
        self.assertions.register(client_id, cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)

    def set_app_only_mailboxes(self, mailboxes: set[str] | None) -> None:
        """Restrict new client_credentials tokens to these mailboxes (None: any mailbox)."""
        self.settings.app_only_mailboxes = (frozenset(m.lower() for m in mailboxes)
                                            if mailboxes is not None else None)

    def validate_access_token(self, token: str) -> str | None:
        """The mailbox ``token`` is for (`ANY_MAILBOX` for unrestricted app-only), or None if unknown,
        expired or revoked."""
        info = self.grants.lookup_access(token)
        if info is None:
            return None
        return info.user if info.user is not None else ANY_MAILBOX

    def token_allows(self, token: str, mailbox: str) -> bool:
        """True if ``token`` is live and may act for ``mailbox`` (the XOAUTH2 user=)."""
        info = self.grants.lookup_access(token)
        if info is None:
            return False
        if info.user is not None:
            return info.user.lower() == mailbox.lower()
        registered = self.settings.registered_service_principals
        if registered is not None and info.client_id not in registered:
            return False  # Exchange does not know the app: 535 5.7.3
        return info.mailboxes is None or mailbox.lower() in info.mailboxes

    def issue_access_token(self, user: str, lifetime_s: float | None = None) -> str:
        """Mint an access token for ``user`` directly (tests)."""
        token, _ = self.grants.issue_access(user, DEFAULT_CLIENT_ID, DEFAULT_SCOPE, lifetime_s)
        return token

    def issue_refresh_token(self, user: str, client_id: str = DEFAULT_CLIENT_ID) -> str:
        """Mint a refresh token for ``user`` directly (tests that skip the authorize flow)."""
        client = self.grants.clients[client_id]
        out = self.grants.token_response(user, client, DEFAULT_SCOPE, with_refresh=True)
        return str(out["refresh_token"])

    def approve_device(self, user_code: str, user: str | None = None) -> bool:
        """Approve a pending device authorization for ``user`` (default_user if None)."""
        return self.grants.decide_device(user_code, user)

    def deny_device(self, user_code: str) -> bool:
        """Deny a pending device authorization (the next poll gets access_denied)."""
        return self.grants.decide_device(user_code, None, deny=True)

    def set_device_auto_approve(self, after_polls: int | None) -> None:
        """Auto-approve device grants (for default_user) after this many pending polls."""
        self.settings.device_auto_approve_after_polls = after_polls

    def set_device_interval(self, interval_s: int) -> None:
        """The polling interval new device grants announce (default 5 s)."""
        self.settings.device_interval_s = interval_s

    def revoke_access_token(self, token: str) -> None:
        """Invalidate an access token before its expiry."""
        self.grants.revoke(token)

    def revoke_refresh_token(self, token: str) -> None:
        """Invalidate a refresh token (the next refresh gets invalid_grant)."""
        self.grants.revoke(token)

    def revoke_all_access_tokens(self) -> None:
        """Invalidate every access token issued so far."""
        with self.grants.lock:
            for info in self.grants.access.values():
                info.revoked = True

    def expire_all_access_tokens(self) -> None:
        """Move the expiry of every access token issued so far into the past."""
        with self.grants.lock:
            past = self.grants.clock() - 1
            for info in self.grants.access.values():
                info.expires_at = min(info.expires_at, past)

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Make the next ``n`` token-endpoint requests answer HTTP ``status`` (JSON server_error)."""
        with self.lock:
            self._fail_next.extend([status] * n)

    def invalid_json_next(self, n: int = 1) -> None:
        """Make the next ``n`` token-endpoint requests answer 200 with a body that is not JSON."""
        with self.lock:
            self._invalid_json_next += n

    def clear_faults(self) -> None:
        """Turn every fault switch off."""
        with self.lock:
            self._fail_next.clear()
            self._invalid_json_next = 0
        self.hang_token_endpoint = self.deny_consent = False
        self.settings.force_invalid_grant = self.settings.issue_expired_tokens = False

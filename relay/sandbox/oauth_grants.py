"""The sandbox OAuth provider's state and grant logic, without HTTP.

Clients, authorization codes, device codes, refresh and access tokens live here, guarded by one
lock, with an injectable clock. Every grant returns a token response dict or raises `GrantError`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.sandbox.oauth_jwt import JwtRejected, verify_service_account_jwt
from relay.sandbox.oauth_tokens import DEFAULT_APP_ROLES, DEFAULT_TENANT_ID, microsoft_claims, mint_jwt

ANY_MAILBOX = "*"
"""What `validate_access_token` returns for an app-only token that may act for any mailbox."""

ACCESS_TOKEN_CHARS = 1600
CODE_LIFETIME_S = 600
PKCE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class GrantError(Exception):
    """An RFC 6749 error response: ``error`` code, description and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error}: {description}")


@dataclass
class Client:
    """A registered OAuth client. ``secret_optional`` lets the default client act as public too."""

    client_id: str
    secret: str | None
    redirect_uris: tuple[str, ...]
    secret_optional: bool = False


@dataclass
class AccessToken:
    """An issued access token: for ``user`` (a mailbox) or app-only (``user`` is None)."""

    user: str | None
    client_id: str
    scope: str
    expires_at: float
    mailboxes: frozenset[str] | None = None  # app-only: allowed mailboxes (None: any)
    revoked: bool = False


@dataclass
class RefreshToken:
    """A refresh token for ``user``; invalid once ``revoked`` (rotation, revocation)."""

    user: str
    client_id: str
    scope: str
    revoked: bool = False
    family: str = ""  # the grant this token descends from (strict rotation revokes it whole)
    rotated: bool = False  # replaced by a newer token of the family (reuse = theft)


@dataclass
class AuthCode:
    """A single-use authorization code bound to client, redirect URI and PKCE challenge."""

    client_id: str
    redirect_uri: str
    challenge: str
    user: str
    scope: str
    expires_at: float
    used: bool = False


@dataclass
class DeviceGrant:
    """An RFC 8628 device authorization in progress."""

    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    interval_s: float
    last_poll: float | None = None
    polls: int = 0
    user: str | None = None
    denied: bool = False
    used: bool = False


def pkce_challenge(verifier: str) -> str:
    """Return the S256 code challenge of ``verifier`` (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def redirect_uri_matches(registered: tuple[str, ...], uri: str) -> bool:
    """True if ``uri`` is registered; loopback URIs match on any port (RFC 8252 7.3), and on any
    path when the registration has none."""
    if uri in registered:
        return True
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "http" or parts.hostname is None:
        return False
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if host not in LOOPBACK_HOSTS:
        return False
    for reg in registered:
        rp = urllib.parse.urlsplit(reg)
        same_host = rp.scheme == "http" and rp.hostname == parts.hostname
        # A registration without a path accepts any path; one with a path needs that path.
        if same_host and (not rp.path or (rp.path or "/") == (parts.path or "/")):
            return True
    return False


@dataclass
class GrantSettings:
    """Behaviour knobs, changed by tests at any time."""

    token_lifetime_s: int = 3600
    rotate_refresh_tokens: bool = False
    # Rotate, and treat reuse of a rotated refresh token as theft: revoke the whole family (as Auth0
    # and Okta do); counted in OAuthGrants.reuse_detections.
    strict_rotation: bool = False
    force_invalid_grant: bool = False
    issue_expired_tokens: bool = False
    expired_expires_in: int = -60
    device_interval_s: int = 5
    device_code_lifetime_s: int = 600
    device_auto_approve_after_polls: int | None = None
    app_only_mailboxes: frozenset[str] | None = None
    # The JWT access tokens' claims: tenant and the application permissions app-only tokens get.
    tenant_id: str = DEFAULT_TENANT_ID
    app_roles: tuple[str, ...] = DEFAULT_APP_ROLES
    # Client ids whose Exchange service principal is registered (New-ServicePrincipal); None: all.
    # App-only tokens of other clients are refused by the upstreams (535 5.7.3 like Exchange).
    registered_service_principals: frozenset[str] | None = None
    default_user: str = "user@sandbox.test"
    extra_audiences: set[str] = field(default_factory=lambda: {"https://oauth2.googleapis.com/token"})


class OAuthGrants:
    """All token state and the grant types of the sandbox provider."""

    def __init__(self, settings: GrantSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.lock = threading.RLock()
        self.reuse_detections = 0  # strict rotation: rotated refresh tokens presented again
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, AuthCode] = {}
        self.devices: dict[str, DeviceGrant] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.service_accounts: dict[str, bytes] = {}
        self.token_audience = ""

    # --- clients --------------------------------------------------------------------------------

    def add_client(self, client: Client) -> None:
        """Register (or replace) a client."""
        with self.lock:
            self.clients[client.client_id] = client

    def authenticate_client(self, client_id: str | None, secret: str | None, *,
                            need_secret: bool = False) -> Client:
        """Return the client after checking its secret, or raise invalid_client (401)."""
        with self.lock:
            client = self.clients.get(client_id or "")
        if client is None:
            raise GrantError("invalid_client", f"unknown client_id {client_id!r}", 401)
        if client.secret is None:
            if need_secret:
                raise GrantError("unauthorized_client", "a public client cannot use this grant", 400)
            return client
        if secret is None:
            if client.secret_optional and not need_secret:
                return client
            raise GrantError("invalid_client", "client authentication required", 401)
        if not hmac.compare_digest(secret.encode(), client.secret.encode()):
            raise GrantError("invalid_client", "invalid client secret", 401)
        return client

    # --- issuing ------------------------------------------------------------------------------

    def issue_access(self, user: str | None, client_id: str, scope: str, lifetime_s: float | None = None,
                     mailboxes: frozenset[str] | None = None) -> tuple[str, AccessToken]:
        """Create and remember an access token."""
        life = self.settings.token_lifetime_s if lifetime_s is None else lifetime_s
        now = self.clock()
        claims = microsoft_claims(user=user, client_id=client_id, scope=scope, issued_at=now,
                                  expires_at=now + life, tenant_id=self.settings.tenant_id,
                                  app_roles=self.settings.app_roles)
        token = mint_jwt(claims, ACCESS_TOKEN_CHARS)
        info = AccessToken(user, client_id, scope, now + life, mailboxes)
        with self.lock:
            self.access[token] = info
        return token, info

    def token_response(self, user: str | None, client: Client, scope: str, *, with_refresh: bool,
                        refresh_token: str | None = None, mailboxes: frozenset[str] | None = None,
                        family: str | None = None) -> dict[str, object]:
        """Issue an access token (and a refresh token if asked) and build the RFC 6749 response."""
        token, _ = self.issue_access(user, client.client_id, scope, mailboxes=mailboxes)
        expires_in = (self.settings.expired_expires_in if self.settings.issue_expired_tokens
                      else self.settings.token_lifetime_s)
        out: dict[str, object] = {"access_token": token, "token_type": "Bearer",
                                  "expires_in": expires_in, "scope": scope}
        if with_refresh:
            if refresh_token is None:
                refresh_token = secrets.token_urlsafe(48)
                with self.lock:
                    self.refresh[refresh_token] = RefreshToken(user or "", client.client_id, scope,
                                                               family=family or refresh_token)
            out["refresh_token"] = refresh_token
        return out

    # --- grants -------------------------------------------------------------------------------

    def new_code(self, client_id: str, redirect_uri: str, challenge: str, user: str, scope: str) -> str:
        """Create an authorization code (after /authorize approved)."""
        code = secrets.token_urlsafe(32)
        with self.lock:
            self.codes[code] = AuthCode(client_id, redirect_uri, challenge, user, scope,
                                        self.clock() + CODE_LIFETIME_S)
        return code

    def grant_authorization_code(self, client: Client, form: dict[str, str]) -> dict[str, object]:
        """authorization_code: single-use code, same redirect_uri, PKCE S256 verifier."""
        verifier = form.get("code_verifier", "")
        with self.lock:
            code = self.codes.get(form.get("code", ""))
            if code is None or code.used or code.expires_at < self.clock():
                raise GrantError("invalid_grant", "authorization code is invalid, used or expired")
            if code.client_id != client.client_id:
                raise GrantError("invalid_grant", "code was issued to another client")
            code.used = True
        if form.get("redirect_uri", "") != code.redirect_uri:
            raise GrantError("invalid_grant", "redirect_uri does not match the authorize request")
        if not PKCE_VERIFIER.match(verifier) or not hmac.compare_digest(pkce_challenge(verifier),
                                                                          code.challenge):
            raise GrantError("invalid_grant", "PKCE code_verifier does not match the code_challenge")
        return self.token_response(code.user, client, code.scope, with_refresh=True)

    def grant_refresh_token(self, client: Client, form: dict[str, str]) -> dict[str, object]:
        """refresh_token, with optional rotation (the old refresh token dies)."""
        if self.settings.force_invalid_grant:
            raise GrantError("invalid_grant", "refresh token has been revoked (forced by the sandbox)")
        presented = form.get("refresh_token", "")
        with self.lock:
            rt = self.refresh.get(presented)
            if rt is not None and rt.rotated and self.settings.strict_rotation:
                self._revoke_family(rt.family or presented)
                raise GrantError("invalid_grant", "refresh token reuse detected; the grant is revoked")
            if rt is None or rt.revoked:
                raise GrantError("invalid_grant", "refresh token is invalid, expired or revoked")
            if rt.client_id != client.client_id:
                raise GrantError("invalid_grant", "refresh token was issued to another client")
            rotate = self.settings.rotate_refresh_tokens or self.settings.strict_rotation
            if rotate:
                rt.revoked = rt.rotated = True
        # Like Microsoft's: the access token is for the scope asked (another resource of the same
        # grant, e.g. Graph); a rotated refresh token keeps the grant's scope.
        scope = form.get("scope", "").strip() or rt.scope
        out = self.token_response(rt.user, client, scope, with_refresh=rotate, family=rt.family or presented)
        if rotate:
            with self.lock:
                self.refresh[str(out["refresh_token"])].scope = rt.scope
        return out

    def _revoke_family(self, family: str) -> None:
        """Strict rotation saw a rotated token again: count it and revoke every token of the grant."""
        self.reuse_detections += 1
        for token, info in self.refresh.items():
            if (info.family or token) == family:
                info.revoked = True

    def grant_client_credentials(self, client: Client, form: dict[str, str]) -> dict[str, object]:
        """client_credentials: an app-only token, no refresh token."""
        scope = form.get("scope", "") or "mail.default"
        return self.token_response(None, client, scope, with_refresh=False,
                                    mailboxes=self.settings.app_only_mailboxes)

    def grant_jwt_bearer(self, client: Client | None, form: dict[str, str]) -> dict[str, object]:
        """jwt-bearer: a service-account assertion; ``sub`` is the mailbox."""
        with self.lock:
            keys = dict(self.service_accounts)
        audiences = {self.token_audience, *self.settings.extra_audiences}
        try:
            claims = verify_service_account_jwt(form.get("assertion", ""), keys, audiences, self.clock())
        except JwtRejected as exc:
            raise GrantError("invalid_grant", str(exc)) from None
        iss = str(claims["iss"])
        scope = str(claims.get("scope", ""))
        pseudo = client or Client(iss, None, ())
        return self.token_response(str(claims["sub"]), pseudo, scope, with_refresh=False)

    def new_device(self, client: Client, scope: str) -> DeviceGrant:
        """Start a device authorization (RFC 8628 section 3.1)."""
        alphabet = "BCDFGHJKLMNPQRSTVWXZ"
        user_code = "".join(secrets.choice(alphabet) for _ in range(8))
        grant = DeviceGrant(secrets.token_urlsafe(32), f"{user_code[:4]}-{user_code[4:]}", client.client_id,
                            scope, self.clock() + self.settings.device_code_lifetime_s,
                            self.settings.device_interval_s)
        with self.lock:
            self.devices[grant.device_code] = grant
        return grant

    def decide_device(self, user_code: str, user: str | None, *, deny: bool = False) -> bool:
        """Approve (for ``user``) or deny a pending device grant; False if the code is unknown."""
        with self.lock:
            for grant in self.devices.values():
                if grant.user_code == user_code.upper():
                    grant.user = user or self.settings.default_user
                    grant.denied = deny
                    return True
        return False

    def grant_device_code(self, client: Client, form: dict[str, str]) -> dict[str, object]:
        """device_code polling: pending, slow_down, expired_token, access_denied or tokens."""
        now = self.clock()
        with self.lock:
            grant = self.devices.get(form.get("device_code", ""))
            if grant is None or grant.used or grant.client_id != client.client_id:
                raise GrantError("invalid_grant", "unknown device_code")
            if grant.expires_at < now:
                raise GrantError("expired_token", "the device code has expired")
            if grant.denied:
                raise GrantError("access_denied", "the user denied the request")
            too_fast = grant.last_poll is not None and now - grant.last_poll < grant.interval_s
            grant.last_poll = now
            if too_fast:
                grant.interval_s += 5
                raise GrantError("slow_down", f"poll at most every {grant.interval_s} s")
            grant.polls += 1
            auto = self.settings.device_auto_approve_after_polls
            if grant.user is None and auto is not None and grant.polls > auto:
                grant.user = self.settings.default_user
            if grant.user is None:
                raise GrantError("authorization_pending", "the user has not approved yet")
            grant.used = True
        return self.token_response(grant.user, client, grant.scope, with_refresh=True)

    # --- validation and revocation --------------------------------------------------------------

    def lookup_access(self, token: str) -> AccessToken | None:
        """The live access token record, or None if unknown, expired or revoked."""
        with self.lock:
            info = self.access.get(token)
            if info is None or info.revoked or info.expires_at <= self.clock():
                return None
            return info

    def revoke(self, token: str) -> bool:
        """Revoke an access or refresh token; True if it was known."""
        with self.lock:
            if token in self.access:
                self.access[token].revoked = True
                return True
            if token in self.refresh:
                self.refresh[token].revoked = True
                return True
        return False

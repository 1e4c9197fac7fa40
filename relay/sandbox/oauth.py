"""`SandboxOAuthProvider`: an OAuth 2.0 authorization server on loopback for tests and the demo.

Endpoints: GET /authorize (auto-approves, PKCE S256), POST /token (authorization_code,
refresh_token, client_credentials, device_code, jwt-bearer), POST /device_authorization,
POST /revoke, POST /introspect (Dovecot's oauth2 passdb, PROTOCOLS.md section 8).
The upstream servers call `validate_access_token` in-process. Fault switches are plain attributes
or methods, safe to flip from any thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
import time
import urllib.parse
from collections.abc import Callable

from relay.httpserver import HttpLimits, HttpRequest, HttpResponse, json_response, serve_connection
from relay.sandbox.loop import LoopbackServer
from relay.sandbox.oauth_assertions import CLIENT_ASSERTION_TYPE, ClientAssertions
from relay.sandbox.oauth_grants import (
    ANY_MAILBOX,
    Client,
    GrantError,
    GrantSettings,
    OAuthGrants,
    redirect_uri_matches,
)

DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_CLIENT_SECRET = "sandbox-secret"  # noqa: S105 - a fixed test credential, not a secret
DEFAULT_REDIRECT_URIS = ("http://127.0.0.1", "http://localhost")
DEFAULT_SCOPE = "mail offline_access"

GRANT_COUNTERS = {
    "authorization_code": "authorization_code_requests",
    "refresh_token": "refresh_requests",
    "client_credentials": "client_credentials_requests",
    "urn:ietf:params:oauth:grant-type:device_code": "device_code_requests",
    "device_code": "device_code_requests",
    "urn:ietf:params:oauth:grant-type:jwt-bearer": "jwt_bearer_requests",
}

_LIMITS = HttpLimits(max_head_bytes=64 * 1024, idle_timeout_s=30.0)

__all__ = ["ANY_MAILBOX", "DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "DEFAULT_SCOPE",
           "SandboxOAuthProvider"]


class SandboxOAuthProvider(LoopbackServer):
    """A loopback OAuth 2.0 server with in-process token validation and fault switches.

    The default client ``sandbox-client`` works as a public client (no secret) and as a
    confidential one (secret ``sandbox-secret``; required for client_credentials).
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

    # --- URLs -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (``https`` when started with a TLS context)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return f"{self.url}/token"

    @property
    def authorize_url(self) -> str:
        """The authorization endpoint."""
        return f"{self.url}/authorize"

    @property
    def device_authorization_url(self) -> str:
        """The RFC 8628 device authorization endpoint."""
        return f"{self.url}/device_authorization"

    @property
    def revocation_url(self) -> str:
        """The RFC 7009 revocation endpoint."""
        return f"{self.url}/revoke"

    @property
    def introspection_url(self) -> str:
        """The introspection endpoint Dovecot's oauth2 passdb calls."""
        return f"{self.url}/introspect"

    async def _start_async(self) -> None:
        await super()._start_async()
        self.grants.token_audience = self.token_url

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

    # --- HTTP -----------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve HTTP requests on one connection (relay.httpserver, keep-alive) until it closes."""
        await serve_connection(reader, writer, self._route, _LIMITS)

    async def _route(self, req: HttpRequest) -> HttpResponse:
        routes: dict[tuple[str, str], Callable[[HttpRequest], HttpResponse]] = {
            ("GET", "/authorize"): self._authorize,
            ("POST", "/device_authorization"): self._device_authorization,
            ("POST", "/revoke"): self._revoke,
            ("POST", "/introspect"): self._introspect,
        }
        if req.path == "/token":
            if req.method != "POST":
                return json_response(405, {"error": "invalid_request", "error_description": "use POST"})
            return await self._token_with_faults(req)
        handler = routes.get((req.method, req.path))
        if handler is None:
            return json_response(404, {"error": "not_found", "error_description": req.path})
        try:
            return handler(req)
        except GrantError as exc:
            return _error(exc)

    async def _token_with_faults(self, req: HttpRequest) -> HttpResponse:
        self.count("token_requests")
        while self.hang_token_endpoint:
            await asyncio.sleep(0.02)
        with self.lock:
            status = self._fail_next.pop(0) if self._fail_next else None
            bad_json = status is None and self._invalid_json_next > 0
            if bad_json:
                self._invalid_json_next -= 1
        if status is not None:
            self.count("injected_failures")
            return json_response(status, {"error": "server_error", "error_description": "injected failure"})
        if bad_json:
            return HttpResponse(200, b"<html>this is not JSON</html>", "application/json")
        try:
            body = self._token(req)
        except GrantError as exc:
            self.count("token_errors")
            return _error(exc)
        self.count("tokens_issued")
        return json_response(200, body)

    def _client_from(self, req: HttpRequest, *, need_secret: bool = False) -> Client:
        client_id = req.form.get("client_id")
        if "client_assertion_type" in req.form or "client_assertion" in req.form:
            if req.form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                raise GrantError("invalid_client", "unsupported client_assertion_type", 401)
            if req.form.get("client_secret"):
                raise GrantError("invalid_request", "send client_secret or client_assertion, not both")
            issuer = self.assertions.verify(client_id, req.form.get("client_assertion", ""), self.token_url)
            self.count("client_assertions_accepted")
            with self.grants.lock:
                client = self.grants.clients.get(issuer)
            if client is None:
                raise GrantError("invalid_client", f"unknown client_id {issuer!r}", 401)
            return client
        secret = req.form.get("client_secret")
        auth = req.headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise GrantError("invalid_client", "malformed Basic authorization", 401) from None
            user, _, pw = decoded.partition(":")
            client_id, secret = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(pw)
        return self.grants.authenticate_client(client_id, secret, need_secret=need_secret)

    def _token(self, req: HttpRequest) -> dict[str, object]:
        grant_type = req.form.get("grant_type", "")
        if not grant_type:
            raise GrantError("invalid_request", "grant_type is required")
        counter = GRANT_COUNTERS.get(grant_type)
        if counter is None:
            raise GrantError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        self.count(counter)
        if grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            has_client = bool(req.form.get("client_id") or req.headers.get("authorization"))
            return self.grants.grant_jwt_bearer(self._client_from(req) if has_client else None, req.form)
        client = self._client_from(req, need_secret=grant_type == "client_credentials")
        if grant_type == "authorization_code":
            return self.grants.grant_authorization_code(client, req.form)
        if grant_type == "refresh_token":
            return self.grants.grant_refresh_token(client, req.form)
        if grant_type == "client_credentials":
            return self.grants.grant_client_credentials(client, req.form)
        return self.grants.grant_device_code(client, req.form)

    def _authorize(self, req: HttpRequest) -> HttpResponse:
        self.count("authorize_requests")
        q = req.query
        with self.grants.lock:
            client = self.grants.clients.get(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri", "")
        # Never redirect to an unverified URI (RFC 6749 4.1.2.1): answer the browser directly.
        if client is None:
            return HttpResponse(400, b"unknown client_id", "text/plain")
        if not redirect_uri or not redirect_uri_matches(client.redirect_uris, redirect_uri):
            return HttpResponse(400, b"redirect_uri is not registered for this client", "text/plain")
        state = q.get("state", "")

        def back(params: dict[str, str]) -> HttpResponse:
            if state:
                params["state"] = state
            sep = "&" if "?" in redirect_uri else "?"
            location = redirect_uri + sep + urllib.parse.urlencode(params)
            return HttpResponse(302, b"", "text/plain", (("Location", location),))

        if q.get("response_type") != "code":
            return back({"error": "unsupported_response_type", "error_description": "use response_type=code"})
        if not state:
            return back({"error": "invalid_request", "error_description": "state is required"})
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return back({"error": "invalid_request", "error_description": "PKCE with S256 is required"})
        scope = q.get("scope", "").strip()
        if not scope:
            return back({"error": "invalid_scope", "error_description": "scope is required"})
        if self.deny_consent:
            return back({"error": "access_denied", "error_description": "the user declined consent"})
        user = q.get("login_hint") or self.settings.default_user
        code = self.grants.new_code(client.client_id, redirect_uri, q["code_challenge"], user, scope)
        return back({"code": code})

    def _device_authorization(self, req: HttpRequest) -> HttpResponse:
        self.count("device_authorization_requests")
        with self.lock:  # invalid_json_next covers this endpoint too (a 200 that is not JSON)
            bad_json = self._invalid_json_next > 0
            if bad_json:
                self._invalid_json_next -= 1
        if bad_json:
            return HttpResponse(200, b"<html>this is not JSON</html>", "application/json")
        client = self._client_from(req)
        grant = self.grants.new_device(client, req.form.get("scope", "") or DEFAULT_SCOPE)
        verification_uri = f"{self.url}/device"
        return json_response(200, {
            "device_code": grant.device_code, "user_code": grant.user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?user_code={grant.user_code}",
            "expires_in": self.settings.device_code_lifetime_s, "interval": grant.interval_s,
        })

    def _revoke(self, req: HttpRequest) -> HttpResponse:
        self.count("revoke_requests")
        self._client_from(req)
        self.grants.revoke(req.form.get("token", ""))
        return HttpResponse(200, b"", "text/plain")  # RFC 7009 2.2: 200 even for unknown tokens

    def _introspect(self, req: HttpRequest) -> HttpResponse:
        # Dovecot treats any 4xx or an "error" field as a temporary failure: always 200.
        self.count("introspect_requests")
        info = self.grants.lookup_access(req.form.get("token", ""))
        if info is None:
            return json_response(200, {"active": False})
        body: dict[str, object] = {"active": True, "scope": info.scope, "client_id": info.client_id,
                                   "exp": int(info.expires_at), "token_type": "Bearer"}
        if info.user is not None:
            body["email"] = info.user
            body["sub"] = info.user
        return json_response(200, body)


def _error(exc: GrantError) -> HttpResponse:
    headers: tuple[tuple[str, str], ...] = ()
    if exc.status == 401:
        headers = (("WWW-Authenticate", 'Basic realm="sandbox"'),)
    return json_response(exc.status, {"error": exc.error, "error_description": exc.description}, headers)

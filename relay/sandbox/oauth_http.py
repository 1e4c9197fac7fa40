"""The HTTP side of `relay.sandbox.oauth.SandboxOAuthProvider`: its URLs, routes and endpoints.

GET /authorize (auto-approves, PKCE S256), POST /token (with the fault switches: hang, injected
HTTP errors, a 200 that is not JSON), POST /device_authorization, POST /revoke, POST /introspect.
The grants themselves are `relay.sandbox.oauth_grants.OAuthGrants`; the subclass in
`relay.sandbox.oauth` sets the attributes declared here and adds the in-process API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
from collections.abc import Callable

from relay.httpserver import HttpLimits, HttpRequest, HttpResponse, json_response, serve_connection
from relay.sandbox.loop import LoopbackServer
from relay.sandbox.oauth_assertions import CLIENT_ASSERTION_TYPE, ClientAssertions
from relay.sandbox.oauth_grants import Client, GrantError, GrantSettings, OAuthGrants, redirect_uri_matches

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


class OAuthHttpServer(LoopbackServer):
    """A loopback OAuth 2.0 server's HTTP endpoints over the grants of its subclass."""

    scheme: str
    settings: GrantSettings
    grants: OAuthGrants
    assertions: ClientAssertions
    deny_consent: bool
    hang_token_endpoint: bool
    _fail_next: list[int]
    _invalid_json_next: int

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

"""The sandbox OAuth provider over real HTTP on loopback (httpx as the client)."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest

from relay.sandbox.oauth import ANY_MAILBOX, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SandboxOAuthProvider
from relay.sandbox.oauth_grants import pkce_challenge
from relay.sandbox.oauth_jwt import generate_rsa_key_pem, sign_service_account_jwt

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REDIRECT = "http://127.0.0.1:8765/callback"


class FakeClock:
    """A settable clock so expiry and polling intervals need no sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[SandboxOAuthProvider]:
    with SandboxOAuthProvider(clock=clock) as p:
        yield p


def post(url: str, **form: str) -> httpx.Response:
    return httpx.post(url, data=form, timeout=10)


def client_credentials(p: SandboxOAuthProvider) -> httpx.Response:
    return post(p.token_url, grant_type="client_credentials", client_id=DEFAULT_CLIENT_ID,
                client_secret=DEFAULT_CLIENT_SECRET, scope="mail")


def authorize_code(p: SandboxOAuthProvider, verifier: str, user: str = "alice@sandbox.test") -> str:
    r = httpx.get(p.authorize_url, params={
        "client_id": DEFAULT_CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code",
        "state": "st-1", "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256",
        "scope": "mail offline_access", "login_hint": user})
    assert r.status_code == 302
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["location"]).query)
    assert query["state"] == ["st-1"]
    return query["code"][0]


def exchange(p: SandboxOAuthProvider, code: str, verifier: str) -> httpx.Response:
    return post(p.token_url, grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                code_verifier=verifier, client_id=DEFAULT_CLIENT_ID)


def test_client_credentials_token_is_long_urlsafe_and_app_only(provider: SandboxOAuthProvider) -> None:
    """client_credentials returns a Bearer JWT of >= 1500 URL-safe chars, valid for any mailbox."""
    body = client_credentials(provider).json()
    token = body["access_token"]
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and "refresh_token" not in body
    assert len(token) >= 1500 and set(token) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") and token.count(".") == 2
    assert provider.validate_access_token(token) == ANY_MAILBOX
    assert provider.token_allows(token, "anyone@sandbox.test")


def test_app_only_mailbox_restriction(provider: SandboxOAuthProvider) -> None:
    """With a configured mailbox set, an app-only token is accepted only for those mailboxes."""
    provider.set_app_only_mailboxes({"Sales@sandbox.test"})
    token = client_credentials(provider).json()["access_token"]
    assert provider.token_allows(token, "sales@sandbox.test")
    assert not provider.token_allows(token, "ceo@sandbox.test")


def test_wrong_client_secret_and_basic_auth(provider: SandboxOAuthProvider) -> None:
    """A wrong secret gets 401 invalid_client; the right one over HTTP Basic works."""
    r = post(provider.token_url, grant_type="client_credentials", client_id=DEFAULT_CLIENT_ID,
             client_secret="nope")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = httpx.post(provider.token_url, data={"grant_type": "client_credentials"},
                   auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert r.status_code == 200


def test_public_client_cannot_use_client_credentials(provider: SandboxOAuthProvider) -> None:
    """A client registered without a secret is refused the client_credentials grant."""
    provider.add_client("pub")
    r = post(provider.token_url, grant_type="client_credentials", client_id="pub")
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"


def test_authorization_code_with_pkce_single_use(provider: SandboxOAuthProvider) -> None:
    """The code flow yields tokens for the login_hint user; the code cannot be used twice."""
    verifier = secrets.token_urlsafe(48)
    code = authorize_code(provider, verifier)
    body = exchange(provider, code, verifier).json()
    assert provider.validate_access_token(body["access_token"]) == "alice@sandbox.test"
    assert body["refresh_token"] and body["scope"] == "mail offline_access"
    again = exchange(provider, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_authorization_code_wrong_verifier_rejected(provider: SandboxOAuthProvider) -> None:
    """A PKCE verifier that does not hash to the challenge gets invalid_grant."""
    code = authorize_code(provider, secrets.token_urlsafe(48))
    r = exchange(provider, code, secrets.token_urlsafe(48))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_authorize_refusals(provider: SandboxOAuthProvider) -> None:
    """Unregistered redirect: 400 without redirect; no PKCE: invalid_request; deny_consent: access_denied."""
    base = {"client_id": DEFAULT_CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code",
            "state": "s", "scope": "mail", "code_challenge": pkce_challenge("x" * 43),
            "code_challenge_method": "S256"}
    r = httpx.get(provider.authorize_url, params={**base, "redirect_uri": "https://evil.example/cb"})
    assert r.status_code == 400 and "location" not in r.headers
    r = httpx.get(provider.authorize_url, params={**base, "code_challenge_method": "plain"})
    assert "error=invalid_request" in r.headers["location"]
    provider.deny_consent = True
    r = httpx.get(provider.authorize_url, params=base)
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["location"]).query)
    assert q["error"] == ["access_denied"] and q["state"] == ["s"]


def test_refresh_rotation_invalidates_old_token(provider: SandboxOAuthProvider) -> None:
    """With rotation on, a refresh returns a new refresh token and the old one gets invalid_grant."""
    provider.rotate_refresh_tokens = True
    old = provider.issue_refresh_token("bob@sandbox.test")
    r = post(provider.token_url, grant_type="refresh_token", refresh_token=old, client_id=DEFAULT_CLIENT_ID)
    new = r.json()["refresh_token"]
    assert new != old and provider.validate_access_token(r.json()["access_token"]) == "bob@sandbox.test"
    r = post(provider.token_url, grant_type="refresh_token", refresh_token=old, client_id=DEFAULT_CLIENT_ID)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = post(provider.token_url, grant_type="refresh_token", refresh_token=new, client_id=DEFAULT_CLIENT_ID)
    assert r.status_code == 200
    assert provider.counters["refresh_requests"] == 3


def test_refresh_without_rotation_and_forced_invalid_grant(provider: SandboxOAuthProvider) -> None:
    """Without rotation the refresh token keeps working (none returned); force_invalid_grant breaks it."""
    rt = provider.issue_refresh_token("bob@sandbox.test")
    for _ in range(2):
        r = post(provider.token_url, grant_type="refresh_token", refresh_token=rt,
                 client_id=DEFAULT_CLIENT_ID)
        assert r.status_code == 200 and "refresh_token" not in r.json()
    provider.force_invalid_grant = True
    r = post(provider.token_url, grant_type="refresh_token", refresh_token=rt, client_id=DEFAULT_CLIENT_ID)
    assert r.json()["error"] == "invalid_grant"


def test_device_flow_pending_slow_down_approved(provider: SandboxOAuthProvider, clock: FakeClock) -> None:
    """Device grant: pending, slow_down when polled too fast, then tokens after approve_device."""
    d = post(provider.device_authorization_url, client_id=DEFAULT_CLIENT_ID, scope="mail").json()
    assert {"device_code", "user_code", "verification_uri", "verification_uri_complete",
            "expires_in", "interval"} <= set(d)
    poll = {"grant_type": DEVICE_GRANT, "device_code": d["device_code"], "client_id": DEFAULT_CLIENT_ID}
    assert post(provider.token_url, **poll).json()["error"] == "authorization_pending"
    assert post(provider.token_url, **poll).json()["error"] == "slow_down"
    clock.now += d["interval"] + 10
    assert provider.approve_device(d["user_code"], "dev@sandbox.test")
    body = post(provider.token_url, **poll).json()
    assert provider.validate_access_token(body["access_token"]) == "dev@sandbox.test"


def test_device_flow_denied_expired_and_auto_approve(provider: SandboxOAuthProvider,
                                                     clock: FakeClock) -> None:
    """Denied grants answer access_denied, stale ones expired_token; auto-approve after N polls works."""
    def start() -> dict[str, str]:
        d = post(provider.device_authorization_url, client_id=DEFAULT_CLIENT_ID).json()
        return {"grant_type": DEVICE_GRANT, "device_code": d["device_code"], "client_id": DEFAULT_CLIENT_ID,
                "user_code": d["user_code"]}
    denied = start()
    provider.deny_device(denied["user_code"])
    assert post(provider.token_url, **denied).json()["error"] == "access_denied"
    stale = start()
    clock.now += 601
    assert post(provider.token_url, **stale).json()["error"] == "expired_token"
    provider.set_device_auto_approve(1)
    auto = start()
    assert post(provider.token_url, **auto).json()["error"] == "authorization_pending"
    clock.now += 10
    assert "access_token" in post(provider.token_url, **auto).json()


def test_jwt_bearer_service_account(provider: SandboxOAuthProvider, clock: FakeClock) -> None:
    """An RS256 assertion from a registered service account yields a token for its sub; a forged one fails."""
    private, public = generate_rsa_key_pem()
    provider.register_service_account("sa@proj.iam.example", public)
    jwt = sign_service_account_jwt(private, iss="sa@proj.iam.example", sub="boss@sandbox.test",
                                   scope="mail", aud=provider.token_url, now=clock.now)
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    body = post(provider.token_url, grant_type=grant, assertion=jwt).json()
    assert provider.validate_access_token(body["access_token"]) == "boss@sandbox.test"
    other_private, _ = generate_rsa_key_pem()
    forged = sign_service_account_jwt(other_private, iss="sa@proj.iam.example", sub="boss@sandbox.test",
                                      scope="mail", aud=provider.token_url, now=clock.now)
    r = post(provider.token_url, grant_type=grant, assertion=forged)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_introspection_active_true_false(provider: SandboxOAuthProvider) -> None:
    """Introspection answers 200 active+email for a live token and 200 active=false otherwise."""
    token = provider.issue_access_token("alice@sandbox.test")
    r = post(provider.introspection_url, token=token, client_id="", client_secret="")
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["email"] == "alice@sandbox.test"
    r = post(provider.introspection_url, token="bogus")
    assert r.status_code == 200 and r.json() == {"active": False}


def test_revocation_expiry_and_skew_switches(provider: SandboxOAuthProvider) -> None:
    """/revoke, revoke_all, expire_all invalidate tokens; issue_expired_tokens reports a past expires_in."""
    t1 = provider.issue_access_token("a@sandbox.test")
    assert post(provider.revocation_url, token=t1, client_id=DEFAULT_CLIENT_ID).status_code == 200
    assert provider.validate_access_token(t1) is None
    t2, t3 = provider.issue_access_token("a@sandbox.test"), provider.issue_access_token("a@sandbox.test")
    provider.revoke_all_access_tokens()
    assert provider.validate_access_token(t2) is None
    t4 = provider.issue_access_token("a@sandbox.test")
    provider.expire_all_access_tokens()
    assert provider.validate_access_token(t4) is None and provider.validate_access_token(t3) is None
    provider.issue_expired_tokens = True
    body = client_credentials(provider).json()
    assert body["expires_in"] <= 0 and provider.validate_access_token(body["access_token"]) == ANY_MAILBOX


def test_token_lifetime_from_clock(provider: SandboxOAuthProvider, clock: FakeClock) -> None:
    """A token dies when the clock passes its lifetime."""
    token = provider.issue_access_token("a@sandbox.test", lifetime_s=60)
    clock.now += 59
    assert provider.validate_access_token(token) == "a@sandbox.test"
    clock.now += 2
    assert provider.validate_access_token(token) is None


def test_fault_switches_fail_next_invalid_json_and_unsupported(provider: SandboxOAuthProvider) -> None:
    """fail_next answers the given status, invalid_json_next a non-JSON 200; unknown grants are refused."""
    provider.fail_next(1, status=503)
    r = client_credentials(provider)
    assert r.status_code == 503 and r.json()["error"] == "server_error"
    provider.invalid_json_next()
    r = client_credentials(provider)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    assert client_credentials(provider).status_code == 200
    r = post(provider.token_url, grant_type="password", client_id=DEFAULT_CLIENT_ID)
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_hang_token_endpoint_until_cleared(provider: SandboxOAuthProvider) -> None:
    """While hang_token_endpoint is set the token endpoint never answers; clearing it restores service."""
    provider.hang_token_endpoint = True
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(provider.token_url, data={"grant_type": "client_credentials"},
                   auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET), timeout=0.3)
    provider.hang_token_endpoint = False
    assert client_credentials(provider).status_code == 200


async def test_500_concurrent_refreshes_all_succeed(provider: SandboxOAuthProvider) -> None:
    """500 concurrent refresh requests all get 200 with a fresh access token."""
    rt = provider.issue_refresh_token("load@sandbox.test")
    limits = httpx.Limits(max_connections=500)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        responses = await asyncio.gather(*(
            client.post(provider.token_url, data={"grant_type": "refresh_token", "refresh_token": rt,
                                                  "client_id": DEFAULT_CLIENT_ID})
            for _ in range(500)))
    assert [r.status_code for r in responses] == [200] * 500
    assert len({r.json()["access_token"] for r in responses}) == 500

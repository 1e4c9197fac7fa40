"""PyJWT as an independent verifier of every JWT the relay signs and the sandbox issues.

The relay signs its JWTs by hand (relay/providers/client_assertion.py, relay/providers/google.py)
and the sandbox verifies them with the same hand-written code family, so a shared misreading of
RFC 7515/7518 (PSS salt length, base64url padding, header names) would pass both. PyJWT is a
third implementation: a signature it accepts with the certificate's public key is a real one.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from relay.config.model import ClientCertificateConfig, CredentialsConfig
from relay.providers.client_assertion import (
    ASSERTION_LIFETIME_S,
    CLIENT_ASSERTION_TYPE,
    b64url,
    build_client_assertion,
    load_signing_certificate,
)
from relay.providers.google import ServiceAccountKey, build_service_account_jwt
from relay.providers.microsoft import MicrosoftProvider
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, SandboxOAuthProvider
from relay.sandbox.oauth_tokens import verification_key
from relay.secret import Secret

TOKEN_URL = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
CLAIMS = ["aud", "exp", "nbf", "iat", "iss", "sub", "jti"]


def _certificate(tmp_path: Path) -> ClientCertificateConfig:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay-app")])
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(start).not_valid_after(start + timedelta(days=30))
            .sign(key, hashes.SHA256()))
    (tmp_path / "app.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "app.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ClientCertificateConfig(tmp_path / "app.crt", tmp_path / "app.key")


def _public_key_of(cert_file: Path) -> rsa.RSAPublicKey:
    key = x509.load_pem_x509_certificate(cert_file.read_bytes()).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


@pytest.mark.parametrize(("algorithm", "thumb_name", "digest"), [
    ("PS256", "x5t#S256", hashlib.sha256),
    ("RS256", "x5t", hashlib.sha1),
])
def test_client_assertion_verifies_with_pyjwt(tmp_path: Path, algorithm: str, thumb_name: str,
                                              digest: object) -> None:
    """PyJWT accepts the relay's client assertion with the certificate's public key; header and
    claims are Microsoft's (thumbprint of the DER certificate, aud, iss = sub, jti, nbf/iat/exp)."""
    config = _certificate(tmp_path)
    cert = load_signing_certificate(config, "credentials.ms.client_certificate")
    before = int(time.time())
    token = build_client_assertion(cert, client_id="app-id", audience=TOKEN_URL, algorithm=algorithm).reveal()
    claims = jwt.decode(token, _public_key_of(config.cert_file), algorithms=[algorithm], audience=TOKEN_URL,
                        issuer="app-id", options={"require": CLAIMS})
    der = cert.certificate.public_bytes(serialization.Encoding.DER)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": algorithm, "typ": "JWT", thumb_name: b64url(digest(der).digest())}  # type: ignore[operator]
    assert claims["sub"] == "app-id"
    assert before <= claims["nbf"] == claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + ASSERTION_LIFETIME_S
    assert len(claims["jti"]) >= 32


def test_client_assertion_fails_pyjwt_with_another_key_or_audience(tmp_path: Path) -> None:
    """The check above can fail: a foreign public key, another audience and an expired assertion
    are all rejected by PyJWT."""
    config = _certificate(tmp_path)
    cert = load_signing_certificate(config, "x")
    token = build_client_assertion(cert, client_id="app-id", audience=TOKEN_URL).reveal()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, stranger, algorithms=["PS256"], audience=TOKEN_URL)
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, _public_key_of(config.cert_file), algorithms=["PS256"], audience="https://other/")
    old = build_client_assertion(cert, client_id="app-id", audience=TOKEN_URL,
                                 now=time.time() - 3600).reveal()
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(old, _public_key_of(config.cert_file), algorithms=["PS256"], audience=TOKEN_URL)


def test_assertions_in_token_requests_verify_with_pyjwt(tmp_path: Path) -> None:
    """The form the Microsoft provider posts to the token endpoint carries a fresh assertion per
    request, for the endpoint it posts to, that PyJWT verifies; no client_secret is sent."""
    config = _certificate(tmp_path)
    creds = CredentialsConfig(name="ms", provider="microsoft", client_id="app-id", tenant_id="contoso",
                              client_certificate=config)
    provider = MicrosoftProvider(creds)
    forms = [provider._with_client({"grant_type": "client_credentials"}) for _ in range(2)]
    audience = provider.endpoints().token_url
    jtis = set()
    for form in forms:
        assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE and "client_secret" not in form
        claims = jwt.decode(form["client_assertion"], _public_key_of(config.cert_file), algorithms=["PS256"],
                            audience=audience, issuer="app-id", options={"require": CLAIMS})
        jtis.add(claims["jti"])
    assert len(jtis) == 2


def test_service_account_jwt_verifies_with_pyjwt() -> None:
    """Google's service-account assertion (RS256): PyJWT verifies it with the key's public half;
    iss = client_email, sub = the mailbox, scope, aud = token_uri, exp <= iat + 3600."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    account = ServiceAccountKey("relay@project.iam.gserviceaccount.com", Secret(pem))
    now = int(time.time())
    token = build_service_account_jwt(account, "sales@example.com", "https://mail.google.com/",
                                      account.token_uri, issued_at=now, lifetime_s=7200).reveal()
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"], audience=account.token_uri,
                        issuer=account.client_email, options={"require": ["aud", "exp", "iat", "iss", "sub"]})
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT"}
    assert claims["sub"] == "sales@example.com" and claims["scope"] == "https://mail.google.com/"
    assert claims["iat"] == now and claims["exp"] == now + 3600


def test_sandbox_access_tokens_verify_with_pyjwt() -> None:
    """The sandbox's access tokens are real RS256 JWTs with Entra's claims (what `relay check`
    reads): PyJWT verifies them with the sandbox's public key; delegated tokens name the user."""
    oauth = SandboxOAuthProvider()
    before = int(time.time())
    token = oauth.issue_access_token("sales@sandbox.test", 600)
    claims = jwt.decode(token, verification_key(), algorithms=["RS256"], audience="https://outlook.office.com",
                        options={"require": ["aud", "exp", "nbf", "iat", "iss", "sub"]})
    assert jwt.get_unverified_header(token) == {"typ": "JWT", "alg": "RS256", "kid": "sandbox-key-1"}
    assert claims["upn"] == "sales@sandbox.test" and claims["appid"] == DEFAULT_CLIENT_ID
    assert claims["iss"].startswith("https://sts.windows.net/") and claims["idtyp"] == "user"
    assert before <= claims["nbf"] and claims["exp"] - claims["iat"] == 600
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, stranger, algorithms=["RS256"], audience="https://outlook.office.com")

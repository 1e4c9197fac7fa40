"""The Google service-account JWT: RS256 signature and claims."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.providers.google import ServiceAccountKey, build_service_account_jwt
from relay.secret import Secret


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the module (generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sa_key(key: rsa.RSAPrivateKey) -> ServiceAccountKey:
    """A ServiceAccountKey holding ``key`` as PEM."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return ServiceAccountKey(client_email="relay@p.iam.gserviceaccount.com", private_key=Secret(pem))


def b64(part: str) -> bytes:
    """Decode unpadded base64url."""
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_jwt_verifies_with_public_key_and_has_claims(rsa_key):
    """The assertion is RS256-signed by the service account key and carries iss/sub/scope/aud/iat/exp."""
    jwt = build_service_account_jwt(sa_key(rsa_key), "sales@corp.test", "https://mail.google.com/",
                                    "https://oauth2.googleapis.com/token", issued_at=1_700_000_000).reveal()
    header, claims, signature = jwt.split(".")
    rsa_key.public_key().verify(b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(),
                                hashes.SHA256())
    assert json.loads(b64(header)) == {"alg": "RS256", "typ": "JWT"}
    assert json.loads(b64(claims)) == {
        "iss": "relay@p.iam.gserviceaccount.com", "sub": "sales@corp.test", "scope": "https://mail.google.com/",
        "aud": "https://oauth2.googleapis.com/token", "iat": 1_700_000_000, "exp": 1_700_003_600}


def test_jwt_lifetime_is_capped_and_tampering_detected(rsa_key):
    """exp never exceeds iat + 3600, and a changed claim no longer verifies."""
    jwt = build_service_account_jwt(sa_key(rsa_key), "a@b", "s", "aud", issued_at=100,
                                    lifetime_s=99999).reveal()
    header, claims, signature = jwt.split(".")
    assert json.loads(b64(claims))["exp"] == 3700
    forged = base64.urlsafe_b64encode(json.dumps({"sub": "boss@b"}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidSignature):
        rsa_key.public_key().verify(b64(signature), f"{header}.{forged}".encode(), padding.PKCS1v15(),
                                    hashes.SHA256())

"""RS256 JWTs for the Google-style service-account grant (RFC 7523): verify (server) and sign (tests)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MAX_JWT_LIFETIME_S = 3600
CLOCK_LEEWAY_S = 60


class JwtRejected(Exception):
    """The assertion is malformed, unsigned by a registered key, or outside its validity window."""


def b64url_decode(part: str) -> bytes:
    """Decode unpadded base64url."""
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JwtRejected("bad base64url") from None


def b64url_encode(raw: bytes) -> str:
    """Encode as unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify_service_account_jwt(
    assertion: str, public_keys: Mapping[str, bytes], audiences: set[str], now: float
) -> dict[str, object]:
    """Return the claims of a valid RS256 ``assertion`` signed by the key registered for its iss."""
    parts = assertion.split(".")
    if len(parts) != 3:
        raise JwtRejected("assertion is not a JWS compact serialisation")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise JwtRejected("assertion header or claims are not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtRejected("assertion header or claims are not JSON objects")
    if header.get("alg") != "RS256":
        raise JwtRejected("only RS256 is accepted")
    iss = claims.get("iss")
    pem = public_keys.get(iss) if isinstance(iss, str) else None
    if pem is None:
        raise JwtRejected(f"unknown service account {iss!r}")
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise JwtRejected("registered key is not RSA")
    try:
        key.verify(b64url_decode(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"),
                   padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise JwtRejected("invalid JWT signature") from None
    if claims.get("aud") not in audiences:
        raise JwtRejected("wrong aud")
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise JwtRejected("iat and exp are required")
    if exp < now - CLOCK_LEEWAY_S or iat > now + CLOCK_LEEWAY_S:
        raise JwtRejected("JWT is expired or not yet valid")
    if exp - iat > MAX_JWT_LIFETIME_S:
        raise JwtRejected("exp must be at most iat + 3600")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise JwtRejected("sub (the mailbox) is required")
    return claims


def sign_service_account_jwt(
    private_key_pem: bytes, *, iss: str, sub: str, scope: str, aud: str, now: float, lifetime_s: int = 3600
) -> str:
    """Build a signed RS256 assertion like a Google service-account client does (tests, demo)."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("service account key must be RSA")
    header = b64url_encode(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = {"iss": iss, "sub": sub, "scope": scope, "aud": aud, "iat": int(now),
              "exp": int(now) + lifetime_s}
    payload = b64url_encode(json.dumps(claims).encode())
    signature = key.sign(f"{header}.{payload}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{b64url_encode(signature)}"


def generate_rsa_key_pem() -> tuple[bytes, bytes]:
    """Return (private PKCS8 PEM, public SubjectPublicKeyInfo PEM) of a new 2048-bit RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public

"""Client-assertion verification for the sandbox OAuth provider (Microsoft certificate credentials).

A client registers public certificates (`ClientAssertions.register`); a token request then
authenticates with ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``
and ``client_assertion=<JWT>``. Checked like Entra does: the header's thumbprint names a registered
certificate (``x5t#S256`` with PS256, ``x5t`` with RS256), the signature, ``aud`` = the token
endpoint, ``iss`` = ``sub`` = client id, ``nbf``/``exp`` window, and a ``jti`` never seen before.
Failures carry Entra's codes where documented (AADSTS700027 signature, AADSTS700024 time window,
AADSTS50027 malformed), plain descriptions otherwise (audience, iss/sub, replayed jti).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.sandbox.oauth_grants import GrantError
from relay.sandbox.oauth_jwt import JwtRejected, b64url_decode, b64url_encode

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_LEEWAY_S = 60
MAX_LIFETIME_S = 3600  # Entra enforces none; the sandbox refuses absurd lifetimes


def _fail(description: str) -> GrantError:
    return GrantError("invalid_client", description, 401)


class ClientAssertions:
    """Registered certificates per client, and the jti values already used (replay protection)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self._certs: dict[str, list[x509.Certificate]] = {}
        self._seen_jti: dict[str, float] = {}
        self.accepted = 0

    def register(self, client_id: str, cert_pem: bytes) -> None:
        """Accept assertions of ``client_id`` signed by this certificate's key (App registration ->
        Certificates & secrets -> Upload)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        with self.lock:
            self._certs.setdefault(client_id, []).append(cert)

    def verify(self, client_id: str | None, assertion: str, audience: str) -> str:
        """Return the client id the valid ``assertion`` authenticates; GrantError otherwise."""
        try:
            header_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(sig_b64)
        except (ValueError, JwtRejected):
            raise _fail("AADSTS50027: JWT token is invalid or malformed.") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _fail("AADSTS50027: JWT token is invalid or malformed.")
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or claims.get("sub") != issuer or (client_id and client_id != issuer):
            raise _fail("client assertion iss and sub must both be the client id")
        cert = self._certificate_for(issuer, header)
        self._check_signature(cert, header, f"{header_b64}.{claims_b64}".encode("ascii"), signature)
        if claims.get("aud") != audience:
            raise _fail(f"client assertion audience is wrong; it must be the token endpoint {audience}")
        self._check_time_and_jti(claims)
        with self.lock:
            self.accepted += 1
        return issuer

    def _certificate_for(self, client_id: str, header: dict[str, object]) -> x509.Certificate:
        alg = header.get("alg")
        digest: hashes.HashAlgorithm
        if alg == "PS256":
            name, digest = "x5t#S256", hashes.SHA256()
        elif alg == "RS256":
            name, digest = "x5t", hashes.SHA1()  # noqa: S303 - a certificate identifier
        else:
            raise _fail(f"unsupported client assertion alg {alg!r} (PS256 or RS256)")
        thumb = header.get(name)
        with self.lock:
            certs = list(self._certs.get(client_id, ()))
        for cert in certs:
            if thumb == b64url_encode(cert.fingerprint(digest)):
                return cert
        raise _fail("AADSTS700027: Client assertion contains an invalid signature. [Reason - The key was "
                    f"not found., Thumbprint of key used by client: '{thumb}']")

    @staticmethod
    def _check_signature(cert: x509.Certificate, header: dict[str, object], signed: bytes,
                         signature: bytes) -> None:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise _fail("AADSTS700027: Client assertion failed signature validation.")
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
        if header["alg"] == "PS256":
            pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        try:
            key.verify(signature, signed, pad, hashes.SHA256())
        except InvalidSignature:
            raise _fail("AADSTS700027: Client assertion failed signature validation.") from None

    def _check_time_and_jti(self, claims: dict[str, object]) -> None:
        now = self.clock()
        exp, nbf, jti = claims.get("exp"), claims.get("nbf", claims.get("iat")), claims.get("jti")
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise _fail("AADSTS700024: Client assertion is not within its valid time range (exp and nbf "
                        "are required).")
        if exp < now - CLOCK_LEEWAY_S or nbf > now + CLOCK_LEEWAY_S or exp - nbf > MAX_LIFETIME_S:
            raise _fail("AADSTS700024: Client assertion is not within its valid time range.")
        if not isinstance(jti, str) or not jti:
            raise _fail("AADSTS50027: client assertion jti is required.")
        with self.lock:
            self._seen_jti = {k: v for k, v in self._seen_jti.items() if v >= now - CLOCK_LEEWAY_S}
            if jti in self._seen_jti:
                raise _fail("client assertion jti was already used (replayed assertion)")
            self._seen_jti[jti] = float(exp)

"""Client assertions (``private_key_jwt``) signed with a certificate's key, Microsoft's format.

Microsoft's "certificate credentials" page (entra-docs identity-platform/certificate-credentials)
now documents ``alg: PS256`` with ``x5t#S256`` = base64url(SHA-256 of the DER certificate); the
older version documented ``alg: RS256`` with ``x5t`` = base64url(SHA-1). PS256 is the default;
``client_certificate.algorithm: RS256`` gives the older format for tenants or tools that need it.
Claims: ``aud`` = the token endpoint, ``iss`` = ``sub`` = the client id, a unique ``jti``,
``nbf`` = ``iat`` = now, ``exp`` = now + 5 minutes. A fresh assertion per token request.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.config.model import ClientCertificateConfig, CredentialsConfig
from relay.errors import ConfigError
from relay.secret import Secret

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300


def b64url(raw: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningCertificate:
    """A loaded certificate and its RSA private key."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def not_after(self) -> datetime:
        """When the certificate expires (UTC)."""
        return self.certificate.not_valid_after_utc

    def thumbprint(self, algorithm: str) -> tuple[str, str]:
        """The header name and value: ``x5t#S256`` (SHA-256) for PS256, ``x5t`` (SHA-1) for RS256."""
        if algorithm == "PS256":
            return "x5t#S256", b64url(self.certificate.fingerprint(hashes.SHA256()))
        return "x5t", b64url(self.certificate.fingerprint(hashes.SHA1()))  # noqa: S303 - an identifier


def load_signing_certificate(config: ClientCertificateConfig, path: str) -> SigningCertificate:
    """Read cert_file and key_file; ConfigError naming ``path`` (the YAML path) when unusable."""
    try:
        cert_bytes = config.cert_file.read_bytes()
        key_bytes = config.key_file.read_bytes()
    except OSError as exc:
        raise ConfigError(path, f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        certificate = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError:
        try:
            certificate = x509.load_der_x509_certificate(cert_bytes)
        except ValueError:
            raise ConfigError(f"{path}.cert_file", f"{config.cert_file} is not a PEM or DER X.509 "
                              "certificate") from None
    password = config.key_passphrase.reveal().encode() if config.key_passphrase else None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=password)
    except TypeError:
        raise ConfigError(f"{path}.key_passphrase", f"{config.key_file} is encrypted: set "
                          "key_passphrase (e.g. ${file:/run/secrets/key_pass})") from None
    except ValueError:
        raise ConfigError(f"{path}.key_file", f"{config.key_file} is not a PEM private key, or "
                          "key_passphrase is wrong") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{path}.key_file", "Microsoft certificate credentials need an RSA key")
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError(f"{path}.key_file", f"{config.key_file} does not belong to the certificate "
                          f"{config.cert_file}")
    return SigningCertificate(certificate, key)


def build_client_assertion(cert: SigningCertificate, *, client_id: str, audience: str,
                           algorithm: str = "PS256", now: float | None = None,
                           lifetime_s: int = ASSERTION_LIFETIME_S) -> Secret:
    """Return a signed client-assertion JWT for one token request."""
    issued = int(time.time() if now is None else now)
    thumb_name, thumb = cert.thumbprint(algorithm)
    header = {"alg": algorithm, "typ": "JWT", thumb_name: thumb}
    claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
              "nbf": issued, "iat": issued, "exp": issued + lifetime_s}
    signing_input = (f"{b64url(json.dumps(header, separators=(',', ':')).encode())}."
                     f"{b64url(json.dumps(claims, separators=(',', ':')).encode())}").encode("ascii")
    if algorithm == "PS256":
        pad: padding.AsymmetricPadding = padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                      salt_length=padding.PSS.DIGEST_LENGTH)
    else:
        pad = padding.PKCS1v15()
    signature = cert.key.sign(signing_input, pad, hashes.SHA256())
    return Secret(f"{signing_input.decode('ascii')}.{b64url(signature)}")


def days_until_expiry(cert: SigningCertificate, now: datetime | None = None) -> float:
    """Days until the certificate expires (negative: expired)."""
    current = now or datetime.now(UTC)
    return (cert.not_after - current).total_seconds() / 86400


def certificate_problems(credentials: CredentialsConfig) -> list[tuple[str, str]]:
    """Problems with ``client_certificate``: together with a secret, a public-client flow, unreadable."""
    cert = credentials.client_certificate
    if cert is None:
        return []
    if credentials.client_secret:
        return [("client_certificate", "set either client_secret or client_certificate, not both")]
    if credentials.flow == "device_code":
        return [("client_certificate", "the device_code flow is for public clients (no credential); use "
                 "authorization_code or client_credentials with a certificate")]
    if not (cert.cert_file.is_file() and cert.key_file.is_file()):
        return []  # the loader already reports the missing file
    try:
        load_signing_certificate(cert, f"credentials.{credentials.name}.client_certificate")
    except ConfigError as exc:
        return [(exc.path.removeprefix(f"credentials.{credentials.name}."), exc.message)]
    return []

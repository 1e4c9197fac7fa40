"""TLS contexts for local listeners and upstream connections, and self-signed certificates.

Upstream connections always verify the certificate and host name unless an endpoint explicitly
sets ``verify_tls: false`` (tests only; logged loudly by the caller).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import os
import ssl
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.config.model import ListenerConfig, UpstreamEndpoint
from relay.errors import ConfigError

log = logging.getLogger("relay.tls")


_TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
# OpenSSL 3 refuses TLS 1.0/1.1 at security level 1 and up (their handshake signs with SHA-1, and
# Debian's openssl.cnf sets level 2): only level 0 lets an old printer in. Strong suites stay
# preferred; the weak ones are merely allowed again.
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"


def is_legacy_tls(min_tls_version: str) -> bool:
    """True for the TLS versions (1.0, 1.1) that need the weakened OpenSSL security level."""
    return _TLS_VERSIONS[min_tls_version] < ssl.TLSVersion.TLSv1_2


def server_context(cert_file: Path, key_file: Path, setting: str = "listen",
                   min_tls_version: str = "1.2") -> ssl.SSLContext:
    """Return a server-side TLS context for a local listener (TLS ``min_tls_version``+, 1.2 by
    default; 1.0/1.1 also lower OpenSSL's security level, see `LEGACY_CIPHERS`)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with warnings.catch_warnings():  # Python deprecates TLS 1.0/1.1; the setting is deliberate
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = _TLS_VERSIONS[min_tls_version]
    if is_legacy_tls(min_tls_version):
        ctx.set_ciphers(LEGACY_CIPHERS)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            setting, f"cannot load TLS certificate {cert_file} / key {key_file}: {exc}"
        ) from None
    return ctx


def listener_context(listener: ListenerConfig, setting: str) -> ssl.SSLContext | None:
    """Return the TLS context for a listener, or None when its TLS mode is ``none``."""
    if listener.tls == "none":
        return None
    if listener.cert_file is None or listener.key_file is None:
        raise ConfigError(setting, f"tls: {listener.tls} needs cert_file and key_file")
    if is_legacy_tls(listener.min_tls_version):
        log.warning(
            "%s.min_tls_version is %s: clients may use TLS %s with weak, obsolete ciphers "
            "(OpenSSL security level 0). Only for devices that cannot do TLS 1.2; put them on a "
            "trusted network and raise the setting to 1.2 as soon as they are replaced.",
            setting, listener.min_tls_version, listener.min_tls_version)
    return server_context(listener.cert_file, listener.key_file, setting, listener.min_tls_version)


@functools.lru_cache(maxsize=256)
def client_context(endpoint: UpstreamEndpoint) -> ssl.SSLContext:
    """Return a client-side TLS context for an upstream endpoint (verifying by default).

    Cached per endpoint: loading the system CA store costs ~15 ms of CPU and ~1 MiB per context,
    which per upstream session would dominate a login. Contexts are safe to share.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if endpoint.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(endpoint.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("ca_file", f"cannot load CA file {endpoint.ca_file}: {exc}") from None
    if not endpoint.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def generate_self_signed(
    directory: Path, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 30
) -> tuple[Path, Path]:
    """Write a self-signed certificate and key (0600) into ``directory``; return their paths.

    The certificate is its own CA, so passing it as ``ca_file`` makes verification succeed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    alt_names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path

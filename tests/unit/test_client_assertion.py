"""Client assertions: the relay's signer against the sandbox's verifier (no sockets), and clouds."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from relay.config.model import ClientCertificateConfig, CredentialsConfig
from relay.configuration import parse_config
from relay.errors import ConfigError
from relay.providers.client_assertion import b64url, build_client_assertion, load_signing_certificate
from relay.providers.microsoft import MicrosoftProvider
from relay.sandbox.oauth_assertions import ClientAssertions
from relay.sandbox.oauth_grants import GrantError
from relay.secret import Secret

AUD = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
NOW = 1_800_000_000.0


def _cert(tmp_path: Path, name: str = "c") -> ClientCertificateConfig:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + timedelta(days=90))
            .sign(key, hashes.SHA256()))
    (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ClientCertificateConfig(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")


def _parts(assertion: Secret) -> tuple[dict[str, object], dict[str, object]]:
    h, c, _ = assertion.reveal().split(".")
    return (json.loads(base64.urlsafe_b64decode(h + "==")), json.loads(base64.urlsafe_b64decode(c + "==")))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ClientAssertions, object]:
    """A verifier with the certificate registered for client 'app', and the loaded signer."""
    config = _cert(tmp_path)
    verifier = ClientAssertions(lambda: NOW)
    verifier.register("app", config.cert_file.read_bytes())
    return verifier, load_signing_certificate(config, "credentials.x.client_certificate")


def test_ps256_header_and_claims_follow_the_microsoft_doc(setup) -> None:  # type: ignore[no-untyped-def]
    """PS256 with x5t#S256 = base64url(SHA-256(DER)); aud, iss = sub, jti, nbf/iat/exp 5 min."""
    verifier, cert = setup
    assertion = build_client_assertion(cert, client_id="app", audience=AUD, now=NOW)
    header, claims = _parts(assertion)
    der = cert.certificate.public_bytes(serialization.Encoding.DER)
    assert header == {"alg": "PS256", "typ": "JWT", "x5t#S256": b64url(hashlib.sha256(der).digest())}
    assert claims["aud"] == AUD and claims["iss"] == claims["sub"] == "app"
    assert claims["nbf"] == claims["iat"] == int(NOW) and claims["exp"] == int(NOW) + 300
    assert verifier.verify("app", assertion.reveal(), AUD) == "app"


def test_rs256_uses_sha1_x5t(setup) -> None:  # type: ignore[no-untyped-def]
    """The older format: RS256 with x5t = base64url(SHA-1(DER)); accepted by the verifier."""
    verifier, cert = setup
    assertion = build_client_assertion(cert, client_id="app", audience=AUD, algorithm="RS256", now=NOW)
    header, _ = _parts(assertion)
    der = cert.certificate.public_bytes(serialization.Encoding.DER)
    assert header["alg"] == "RS256" and header["x5t"] == b64url(hashlib.sha1(der).digest())  # noqa: S324
    assert verifier.verify(None, assertion.reveal(), AUD) == "app"


def test_each_assertion_has_a_new_jti_and_a_replay_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    """Fresh jti per request; presenting the same assertion twice fails."""
    verifier, cert = setup
    first = build_client_assertion(cert, client_id="app", audience=AUD, now=NOW)
    second = build_client_assertion(cert, client_id="app", audience=AUD, now=NOW)
    assert _parts(first)[1]["jti"] != _parts(second)[1]["jti"]
    verifier.verify("app", first.reveal(), AUD)
    with pytest.raises(GrantError, match="replayed"):
        verifier.verify("app", first.reveal(), AUD)


@pytest.mark.parametrize(("kwargs", "audience", "needle"), [
    ({"now": NOW - 3600}, AUD, "AADSTS700024"),  # expired an hour ago
    ({"now": NOW + 3600}, AUD, "AADSTS700024"),  # not valid yet
    ({"now": NOW}, "https://login.microsoftonline.com/other/oauth2/v2.0/token", "audience"),
    ({"now": NOW, "client_id": "intruder"}, AUD, "AADSTS700027"),  # no certificate for that client
])
def test_bad_assertions_are_refused(setup, kwargs, audience, needle) -> None:  # type: ignore[no-untyped-def]
    """Expired, future, wrong audience, unknown client: refused with a clear reason."""
    verifier, cert = setup
    args = {"client_id": "app", **kwargs}
    assertion = build_client_assertion(cert, audience=AUD, **args)
    with pytest.raises(GrantError, match=needle):
        verifier.verify(None, assertion.reveal(), audience)


def test_forged_signature_is_refused(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A different key with the registered certificate's thumbprint fails signature validation."""
    verifier, cert = setup
    other = load_signing_certificate(_cert(tmp_path, "other"), "x")
    forged = build_client_assertion(type(cert)(cert.certificate, other.key), client_id="app", audience=AUD,
                                    now=NOW)
    with pytest.raises(GrantError, match="AADSTS700027: Client assertion failed signature validation"):
        verifier.verify("app", forged.reveal(), AUD)


def test_key_that_does_not_match_the_certificate_is_a_config_error(tmp_path: Path) -> None:
    """cert_file and key_file from different pairs: a ConfigError naming key_file."""
    a, b = _cert(tmp_path, "a"), _cert(tmp_path, "b")
    with pytest.raises(ConfigError, match="does not belong"):
        load_signing_certificate(ClientCertificateConfig(a.cert_file, b.key_file),
                                 "credentials.x.client_certificate")


def _base(creds: dict[str, object]) -> dict[str, object]:
    return {"credentials": {"ms": {"provider": "microsoft", "client_id": "c", "tenant_id": "t", **creds}},
            "accounts": {"a": {"username": "u", "password_hash": None,
                               "allow_without_auth_from": ["127.0.0.1/32"], "mailbox": "a@contoso.us",
                               "credentials": "ms"}}}


@pytest.mark.parametrize(("cloud", "login", "scope"), [
    ("global", "login.microsoftonline.com", "https://outlook.office.com/SMTP.Send"),
    ("usgovernment", "login.microsoftonline.us", "https://outlook.office365.us/SMTP.Send"),
    ("china", "login.partner.microsoftonline.cn", "https://partner.outlook.cn/SMTP.Send"),
])
def test_cloud_selects_login_and_scope(cloud: str, login: str, scope: str) -> None:
    """cloud: picks the sign-in host and the scope resource (mail servers written where needed)."""
    servers = {} if cloud == "global" else {
        "smtp": {"host": "smtp.example.test", "port": 587, "tls": "starttls"},
        "pop3": {"host": "pop.example.test", "port": 995, "tls": "implicit"}}
    data = _base({"cloud": cloud})
    data["accounts"]["a"].update(servers)  # type: ignore[index]
    config = parse_config(data)
    provider = MicrosoftProvider(config.credentials["ms"])
    assert provider.endpoints().token_url == f"https://{login}/t/oauth2/v2.0/token"
    assert scope in provider.default_scopes()
    assert config.accounts["a"].max_upstream_sessions == 3


def test_global_cloud_has_microsofts_documented_mail_servers() -> None:
    """The worldwide cloud defaults to smtp.office365.com:587 and outlook.office365.com:995/993."""
    account = parse_config(_base({})).accounts["a"]
    assert account.smtp is not None and account.pop3 is not None and account.imap is not None
    assert (account.smtp.host, account.smtp.port, account.smtp.tls) == ("smtp.office365.com", 587, "starttls")
    assert (account.pop3.host, account.pop3.port) == ("outlook.office365.com", 995)
    assert (account.imap.host, account.imap.port) == ("outlook.office365.com", 993)


@pytest.mark.parametrize(("cloud", "smtp", "pop3"), [
    ("usgovernment", "smtp.office365.us", "outlook.office365.us"),
    ("china", "smtp.partner.outlook.cn", "partner.outlook.cn"),
])
def test_national_cloud_mail_servers_are_never_guessed(cloud: str, smtp: str, pop3: str) -> None:
    """Microsoft documents no mail hosts for the national clouds: the config names the settings to
    write and the hosts working clients report, instead of silently defaulting to them."""
    with pytest.raises(ConfigError) as info:
        parse_config(_base({"cloud": cloud}))
    problems = dict(info.value.problems)
    assert set(problems) == {"accounts.a.smtp", "accounts.a.pop3"}
    assert f"host: {smtp}, port: 587" in problems["accounts.a.smtp"]
    assert f"host: {pop3}, port: 995" in problems["accounts.a.pop3"]
    assert "credentials.ms.cloud" in problems["accounts.a.smtp"]


def test_unknown_cloud_and_certificate_with_secret_are_config_errors(tmp_path: Path) -> None:
    """A misspelled cloud and a secret next to a certificate are reported at their YAML paths."""
    cert = _cert(tmp_path)
    with pytest.raises(ConfigError) as info:
        parse_config(_base({"cloud": "gcchigh", "client_secret": "s",
                            "client_certificate": {"cert_file": str(cert.cert_file),
                                                   "key_file": str(cert.key_file)}}))
    paths = {path for path, _ in info.value.problems}
    assert {"credentials.ms.cloud", "credentials.ms.client_certificate"} <= paths


def test_credentials_model_defaults() -> None:
    """Existing configs keep working: global cloud, no certificate, no proxy."""
    creds = CredentialsConfig(name="x", provider="microsoft", client_id="c")
    assert (creds.cloud, creds.client_certificate, creds.proxy) == ("global", None, None)

"""Certificate credentials and the permissions preflight, through `relay check` against the sandbox."""

from __future__ import annotations

from provider_helpers import MAILBOX, ProviderSetup, make_certificate, run_relay

from relay.sandbox.oauth import DEFAULT_CLIENT_ID
from relay.sandbox.oauth_tokens import object_id


def _check(ms: ProviderSetup) -> tuple[int, str]:
    result = run_relay("check", "-c", str(ms.write()), "--timeout", "10")
    return result.returncode, result.stdout + result.stderr


def test_client_credentials_with_a_ps256_certificate(ms: ProviderSetup) -> None:
    """A registered certificate: the token comes by client assertion (no secret), SMTP and POP3 log in;
    check names the Exchange service principal commands from the token's claims."""
    cert, key = make_certificate(ms.dir, "app")
    ms.world.oauth.register_client_certificate(DEFAULT_CLIENT_ID, cert.read_bytes())
    ms.use_certificate(cert, key)
    code, out = _check(ms)
    assert code == 0, out
    assert ms.world.oauth.counters.get("client_assertions_accepted", 0) >= 1
    sp_object = object_id("sp:" + DEFAULT_CLIENT_ID)
    assert f"New-ServicePrincipal -AppId {DEFAULT_CLIENT_ID} -ObjectId {sp_object}" in out


def test_rs256_with_x5t_and_an_encrypted_key(ms: ProviderSetup) -> None:
    """The older format (RS256 + SHA-1 x5t) and a passphrase-protected key from ${file:} work too."""
    cert, key = make_certificate(ms.dir, "old", passphrase="s3cret pass")
    (ms.dir / "pass").write_text("s3cret pass\n")
    ms.world.oauth.register_client_certificate(DEFAULT_CLIENT_ID, cert.read_bytes())
    ms.use_certificate(cert, key, algorithm="RS256", key_passphrase="${file:" + str(ms.dir / "pass") + "}")
    code, out = _check(ms)
    assert code == 0, out
    assert "s3cret pass" not in out


def test_unregistered_certificate_is_explained(ms: ProviderSetup) -> None:
    """A certificate the app does not know: AADSTS700027 and the fix naming client_certificate."""
    cert, key = make_certificate(ms.dir, "stranger")
    ms.use_certificate(cert, key)
    code, out = _check(ms)
    assert code == 1
    assert "AADSTS700027" in out
    assert "upload credentials.ms.client_certificate.cert_file to the app registration" in out


def test_certificate_expiring_soon_is_a_warning(ms: ProviderSetup) -> None:
    """Expiry within 30 days: a warning with the date, the account still OK."""
    cert, key = make_certificate(ms.dir, "soon", days=10)
    ms.world.oauth.register_client_certificate(DEFAULT_CLIENT_ID, cert.read_bytes())
    ms.use_certificate(cert, key)
    code, out = _check(ms)
    assert code == 0, out
    assert "Warnings:" in out and "credentials.ms.client_certificate.cert_file expires on" in out


def test_expired_certificate_is_an_error(ms: ProviderSetup) -> None:
    """An expired certificate breaks the account and says how to replace it."""
    cert, key = make_certificate(ms.dir, "old", days=-2)
    ms.world.oauth.register_client_certificate(DEFAULT_CLIENT_ID, cert.read_bytes())
    ms.use_certificate(cert, key)
    code, out = _check(ms)
    assert code == 1 and "cert_file expired on" in out


def test_app_only_without_service_principal_gets_the_commands(ms: ProviderSetup) -> None:
    """Exchange refuses an app-only token whose app is not registered: the fix is New-ServicePrincipal
    with the app id and object id read from the token."""
    cert, key = make_certificate(ms.dir, "app")
    ms.world.oauth.register_client_certificate(DEFAULT_CLIENT_ID, cert.read_bytes())
    ms.world.oauth.settings.registered_service_principals = frozenset()
    ms.use_certificate(cert, key)
    ms.accounts["ops"]["pop3"] = False
    code, out = _check(ms)
    assert code == 1 and "REJECTED" in out
    assert (f"register the app's service principal in Exchange Online: New-ServicePrincipal -AppId "
            f"{DEFAULT_CLIENT_ID} -ObjectId {object_id('sp:' + DEFAULT_CLIENT_ID)}") in out


def test_missing_app_role_is_an_error(ms: ProviderSetup) -> None:
    """An app-only token without SMTP.SendAsApp: check says which permission and where to add it."""
    cert, key = make_certificate(ms.dir, "app")
    ms.world.oauth.register_client_certificate(DEFAULT_CLIENT_ID, cert.read_bytes())
    ms.world.oauth.settings.app_roles = ("POP.AccessAsApp",)
    ms.use_certificate(cert, key)
    code, out = _check(ms)
    assert code == 1
    assert "lacks the application permission SMTP.SendAsApp" in out


def _delegated(ms: ProviderSetup) -> None:
    ms.credentials["flow"] = "authorization_code"
    ms.credentials["client_secret"] = "sandbox-secret"


def test_graph_token_for_smtp_is_an_error(ms: ProviderSetup) -> None:
    """A delegated token with Graph's audience: check says SMTP/POP3 refuse it and what to change."""
    _delegated(ms)
    ms.seed("ops", MAILBOX, "https://graph.microsoft.com/Mail.Send offline_access")
    code, out = _check(ms)
    assert code == 1 and "is for Microsoft Graph (aud https://graph.microsoft.com)" in out


def test_missing_delegated_scope_is_an_error(ms: ProviderSetup) -> None:
    """A delegated token without SMTP.Send: named, with the consent fix."""
    _delegated(ms)
    ms.seed("ops", MAILBOX, "https://outlook.office.com/POP.AccessAsUser.All offline_access")
    code, out = _check(ms)
    assert code == 1 and "lacks the delegated permission SMTP.Send" in out


def test_token_of_another_user_warns_about_shared_mailbox_rights(ms: ProviderSetup) -> None:
    """A delegated token for a different user than mailbox: the shared-mailbox permissions to grant."""
    _delegated(ms)
    ms.seed("ops", "delegate@sandbox.test",
            "https://outlook.office.com/SMTP.Send https://outlook.office.com/POP.AccessAsUser.All "
            "offline_access")
    code, out = _check(ms)
    assert "the token is for delegate@sandbox.test but mailbox is ops@sandbox.test" in out
    assert "Add-MailboxPermission -Identity ops@sandbox.test -User delegate@sandbox.test" in out
    assert code == 1  # the sandbox (like Exchange) refuses the login for another mailbox

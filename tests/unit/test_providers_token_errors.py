"""The pure mapping from token endpoint errors to the relay's error tree."""

from __future__ import annotations

import pytest

from relay.errors import AuthorizationNeeded, TokenRefreshFailed
from relay.providers.token_errors import ProviderConfigProblem, map_token_error


def aad(code: str, error: str = "invalid_grant") -> dict[str, str]:
    """A Microsoft-style error body carrying an AADSTS code."""
    return {"error": error, "error_description": f"AADSTS{code}: something happened. Trace ID: x"}


@pytest.mark.parametrize(("status", "payload", "kind", "needle"), [
    (400, {"error": "invalid_grant"}, AuthorizationNeeded, "relay authorize sales"),
    (400, aad("70008"), AuthorizationNeeded, "relay authorize sales"),
    (400, aad("700082"), AuthorizationNeeded, "relay authorize sales"),
    (400, aad("50173"), AuthorizationNeeded, "revoked"),
    (400, aad("65001", "invalid_grant"), AuthorizationNeeded, "consent"),
    (400, aad("50076", "interaction_required"), AuthorizationNeeded, "multi-factor"),
    (400, aad("50079", "interaction_required"), AuthorizationNeeded, "multi-factor"),
    (401, aad("7000215", "invalid_client"), ProviderConfigProblem, "credentials.contoso.client_secret"),
    (400, aad("700016", "unauthorized_client"), ProviderConfigProblem, "not found in the tenant"),
    (400, aad("90002", "invalid_request"), ProviderConfigProblem, "credentials.contoso.tenant_id"),
    (401, aad("700027", "invalid_client"), ProviderConfigProblem, "contoso.client_certificate.cert_file"),
    (401, aad("700024", "invalid_client"), ProviderConfigProblem, "clock"),
    (401, aad("700030", "invalid_client"), ProviderConfigProblem, "subject name"),
    (401, aad("7000222", "invalid_client"), ProviderConfigProblem, "client secret expired"),
    (401, aad("7000218", "invalid_client"), ProviderConfigProblem, "Allow public client flows"),
    (401, aad("700025", "invalid_client"), ProviderConfigProblem, "remove credentials.contoso.client_secret"),
    (400, {"error": "invalid_scope"}, ProviderConfigProblem, "credentials.contoso.scopes"),
    (500, {"error": "server_error"}, TokenRefreshFailed, "HTTP 500"),
    (503, None, TokenRefreshFailed, "HTTP 503"),
    (429, None, TokenRefreshFailed, "HTTP 429"),
    (400, None, TokenRefreshFailed, "without an OAuth error"),
    (403, "<html>", TokenRefreshFailed, "without an OAuth error"),
    (400, {"error": "temporarily_unavailable"}, TokenRefreshFailed, "temporarily"),
])
def test_error_mapping(status, payload, kind, needle):
    """Each provider answer maps to the right error class with a message naming the fix."""
    error = map_token_error(status, payload, credentials="contoso", account="sales")
    assert type(error) is kind
    assert needle in str(error)
    assert "account 'sales'" in str(error)
    assert error.account == "sales"


def test_50173_wording():
    """AADSTS50173 explains the password change."""
    assert "password" in str(map_token_error(400, aad("50173"), credentials="c", account="a"))


def test_mapping_without_account_names_credentials():
    """Without an account the message names the credentials and the generic authorize command."""
    error = map_token_error(400, {"error": "invalid_grant"}, credentials="contoso")
    assert "credentials 'contoso'" in str(error) and "relay authorize ACCOUNT" in str(error)


def test_description_is_not_echoed():
    """The provider's free-text description (which could hold anything) is not copied into messages."""
    body = {"error": "invalid_grant", "error_description": "AADSTS70008: secret-looking-text"}
    assert "secret-looking-text" not in str(map_token_error(400, body, credentials="c", account="a"))

"""Pure mapping from a token endpoint's error answer to the relay's error tree.

No I/O: ``map_token_error(status, payload, ...)`` is a table lookup, unit-tested case by case.
Every message names the credentials/account and the setting or command that fixes it; none
contains a token or secret (providers never echo them in error bodies, and we only quote the
error code and the AADSTS number).
"""

from __future__ import annotations

import re

from relay.errors import AuthorizationNeeded, OAuthError, TokenRefreshFailed

_AADSTS = re.compile(r"AADSTS(\d+)")

# AADSTS codes meaning the stored grant is dead: an operator must authorize again.
_REAUTHORIZE_CODES = {
    "70008": "the refresh token expired (unused for too long)",
    "700082": "the refresh token expired due to inactivity",
    "50173": "the grant was revoked (the user's password changed or a session was revoked)",
    "50076": "multi-factor authentication is now required",
    "50079": "multi-factor authentication enrolment is required",
    "65001": "the user or an administrator has not consented to the app's permissions",
}


# AADSTS codes of a refused certificate credential (client assertion).
_CERTIFICATE_CODES = {
    "700027": "the client assertion failed signature validation (the certificate is not registered on "
              "the app, or the key does not match it)",
    "700024": "the client assertion is not within its valid time range",
    "700030": "the certificate's subject name is not authorized for this app",
}


class ProviderConfigProblem(OAuthError):
    """The provider refused because of a setting (app registration, secret, tenant): not transient."""

    exit_code = 2


def map_token_error(status: int, payload: object, *, credentials: str,
                    account: str | None = None) -> OAuthError:
    """Return the error to raise for a failed token request (HTTP ``status``, parsed JSON ``payload``)."""
    who = f"account '{account}'" if account else f"credentials '{credentials}'"
    authorize = f"run `relay authorize {account}`" if account else "run `relay authorize ACCOUNT`"
    body = payload if isinstance(payload, dict) else {}
    error = str(body.get("error", "")) if body.get("error") is not None else ""
    description = str(body.get("error_description", "") or "")
    match = _AADSTS.search(description)
    code = match.group(1) if match else ""
    tag = f" (AADSTS{code})" if code else (f" ({error})" if error else "")

    if status >= 500 or status == 429:
        return TokenRefreshFailed(f"{who}: the OAuth token endpoint failed (HTTP {status}); will retry",
                                  account=account, provider_error=error or None)
    if not error:
        return TokenRefreshFailed(f"{who}: the OAuth token endpoint answered HTTP {status} without an "
                                  "OAuth error body; will retry", account=account)

    if code == "7000215":
        return ProviderConfigProblem(
            f"{who}: the provider rejected the client secret{tag}; put the current secret value (not its "
            f"ID) into credentials.{credentials}.client_secret", account=account, provider_error=error)
    if code == "700016":
        return ProviderConfigProblem(
            f"{who}: the application (credentials.{credentials}.client_id) is not found in the tenant"
            f"{tag}; check client_id and tenant_id, or have an administrator consent to the app in that "
            "tenant", account=account, provider_error=error)
    if code == "90002":
        return ProviderConfigProblem(
            f"{who}: the tenant was not found{tag}; fix credentials.{credentials}.tenant_id (a tenant GUID "
            "or a verified domain)", account=account, provider_error=error)
    if code == "7000218":
        return ProviderConfigProblem(
            f"{who}: the app registration requires a client secret{tag}; either set credentials."
            f"{credentials}.client_secret or enable 'Allow public client flows' in the app's "
            "Authentication settings (needed for device code)", account=account, provider_error=error)
    if code in _CERTIFICATE_CODES:
        return ProviderConfigProblem(
            f"{who}: {_CERTIFICATE_CODES[code]}{tag}; upload the certificate in credentials.{credentials}."
            "client_certificate.cert_file to the app registration (Certificates & secrets), check that "
            "key_file belongs to it and that this machine's clock is right", account=account,
            provider_error=error)
    if code == "7000222":
        return ProviderConfigProblem(
            f"{who}: the client secret expired{tag}; create a new secret (or switch to client_certificate) "
            f"and put it into credentials.{credentials}.client_secret", account=account, provider_error=error)
    if code == "700025":
        return ProviderConfigProblem(
            f"{who}: the app is a public client and must not send a secret{tag}; remove credentials."
            f"{credentials}.client_secret", account=account, provider_error=error)
    if code in _REAUTHORIZE_CODES:
        reason = _REAUTHORIZE_CODES[code]
        fix = authorize
        if code == "65001":
            fix = (f"grant consent to the app's permissions (an administrator may need to), then {authorize}")
        return AuthorizationNeeded(f"{who}: {reason}{tag}; {fix}", account=account, provider_error=error)
    if error == "invalid_grant":
        return AuthorizationNeeded(
            f"{who}: the stored grant is no longer valid (invalid_grant{', AADSTS' + code if code else ''});"
            f" {authorize}", account=account, provider_error=error)
    if error in {"invalid_client", "unauthorized_client"}:
        return ProviderConfigProblem(
            f"{who}: the provider rejected the client{tag}; check credentials.{credentials}.client_id "
            "and client_secret, and that the app may use this grant", account=account, provider_error=error)
    if error == "invalid_scope":
        return ProviderConfigProblem(
            f"{who}: the provider rejected the requested scopes{tag}; check credentials.{credentials}."
            "scopes (or remove it to use the provider's defaults)", account=account, provider_error=error)
    if error in {"consent_required", "interaction_required"}:
        return AuthorizationNeeded(f"{who}: the provider needs the user to sign in again{tag}; {authorize}",
                                   account=account, provider_error=error)
    if error in {"temporarily_unavailable", "server_error"}:
        return TokenRefreshFailed(f"{who}: the provider is temporarily unavailable{tag}; will retry",
                                  account=account, provider_error=error)
    return ProviderConfigProblem(
        f"{who}: the token request was refused{tag}; check credentials.{credentials} against the "
        "provider's app registration", account=account, provider_error=error)

"""Pure mapping from a token endpoint's error answer to the relay's error tree.

No I/O: ``map_token_error(status, payload, ...)`` is a table lookup, unit-tested case by case.
Every message names the credentials/account and the setting or command that fixes it; none
contains a token or secret (providers never echo them in error bodies, and we only quote the
error code and the AADSTS number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class _Refusal:
    """One refused token request, with the names its messages use."""

    who: str  # "account 'x'" or "credentials 'y'"
    authorize: str  # the command that authorizes again
    credentials: str
    account: str | None
    error: str  # the OAuth ``error`` code ("" when absent)
    code: str  # the AADSTS number ("" when absent)
    tag: str  # " (AADSTS...)" or " (error)" for the message

    def config(self, message: str) -> ProviderConfigProblem:
        """A setting must change: ``who: message``."""
        return ProviderConfigProblem(f"{self.who}: {message}", account=self.account,
                                     provider_error=self.error)

    def reauthorize(self, message: str) -> AuthorizationNeeded:
        """The grant is dead: ``who: message``."""
        return AuthorizationNeeded(f"{self.who}: {message}", account=self.account,
                                   provider_error=self.error)


def map_token_error(status: int, payload: object, *, credentials: str,
                    account: str | None = None) -> OAuthError:
    """Return the error to raise for a failed token request (HTTP ``status``, parsed JSON ``payload``)."""
    who = f"account '{account}'" if account else f"credentials '{credentials}'"
    body = payload if isinstance(payload, dict) else {}
    error = str(body.get("error", "")) if body.get("error") is not None else ""
    if status >= 500 or status == 429:
        return TokenRefreshFailed(f"{who}: the OAuth token endpoint failed (HTTP {status}); will retry",
                                  account=account, provider_error=error or None)
    if not error:
        return TokenRefreshFailed(f"{who}: the OAuth token endpoint answered HTTP {status} without an "
                                  "OAuth error body; will retry", account=account)
    match = _AADSTS.search(str(body.get("error_description", "") or ""))
    code = match.group(1) if match else ""
    refusal = _Refusal(
        who=who, credentials=credentials, account=account, error=error, code=code,
        authorize=f"run `relay authorize {account}`" if account else "run `relay authorize ACCOUNT`",
        tag=f" (AADSTS{code})" if code else f" ({error})")
    return _by_aadsts_code(refusal) or _by_oauth_error(refusal)


def _by_aadsts_code(r: _Refusal) -> OAuthError | None:
    """The error for a known AADSTS number (Microsoft Entra), or None."""
    code, tag, credentials = r.code, r.tag, r.credentials
    if code == "7000215":
        return r.config(f"the provider rejected the client secret{tag}; put the current secret value (not "
                        f"its ID) into credentials.{credentials}.client_secret")
    if code == "700016":
        return r.config(f"the application (credentials.{credentials}.client_id) is not found in the tenant"
                        f"{tag}; check client_id and tenant_id, or have an administrator consent to the app "
                        "in that tenant")
    if code == "90002":
        return r.config(f"the tenant was not found{tag}; fix credentials.{credentials}.tenant_id (a tenant "
                        "GUID or a verified domain)")
    if code == "7000218":
        return r.config(f"the app registration requires a client secret{tag}; either set credentials."
                        f"{credentials}.client_secret or enable 'Allow public client flows' in the app's "
                        "Authentication settings (needed for device code)")
    if code in _CERTIFICATE_CODES:
        return r.config(f"{_CERTIFICATE_CODES[code]}{tag}; upload the certificate in credentials."
                        f"{credentials}.client_certificate.cert_file to the app registration (Certificates "
                        "& secrets), check that key_file belongs to it and that this machine's clock is "
                        "right")
    if code == "7000222":
        return r.config(f"the client secret expired{tag}; create a new secret (or switch to "
                        f"client_certificate) and put it into credentials.{credentials}.client_secret")
    if code == "700025":
        return r.config(f"the app is a public client and must not send a secret{tag}; remove credentials."
                        f"{credentials}.client_secret")
    if code in _REAUTHORIZE_CODES:
        fix = r.authorize
        if code == "65001":
            fix = f"grant consent to the app's permissions (an administrator may need to), then {r.authorize}"
        return r.reauthorize(f"{_REAUTHORIZE_CODES[code]}{tag}; {fix}")
    return None


def _by_oauth_error(r: _Refusal) -> OAuthError:
    """The error for the RFC 6749 ``error`` code (any provider); a refusal when unknown."""
    error, tag, credentials = r.error, r.tag, r.credentials
    if error == "invalid_grant":
        return r.reauthorize(f"the stored grant is no longer valid (invalid_grant"
                             f"{', AADSTS' + r.code if r.code else ''}); {r.authorize}")
    if error in {"invalid_client", "unauthorized_client"}:
        return r.config(f"the provider rejected the client{tag}; check credentials.{credentials}.client_id "
                        "and client_secret, and that the app may use this grant")
    if error == "invalid_scope":
        return r.config(f"the provider rejected the requested scopes{tag}; check credentials.{credentials}."
                        "scopes (or remove it to use the provider's defaults)")
    if error in {"consent_required", "interaction_required"}:
        return r.reauthorize(f"the provider needs the user to sign in again{tag}; {r.authorize}")
    if error in {"temporarily_unavailable", "server_error"}:
        return TokenRefreshFailed(f"{r.who}: the provider is temporarily unavailable{tag}; will retry",
                                  account=r.account, provider_error=error)
    return r.config(f"the token request was refused{tag}; check credentials.{credentials} against the "
                    "provider's app registration")

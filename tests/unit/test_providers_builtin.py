"""Built-in providers: endpoints, scopes, authorization URLs, config problems, the registry."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from relay.config.model import CredentialsConfig
from relay.errors import ConfigError
from relay.providers.base import OAuthProvider
from relay.providers.generic import GenericProvider
from relay.providers.google import GoogleProvider
from relay.providers.microsoft import MicrosoftProvider
from relay.providers.registry import load_provider_class


def creds(provider: str = "microsoft", **kw: object) -> CredentialsConfig:
    """Credentials with sensible defaults for provider tests."""
    base: dict[str, object] = {"name": "contoso", "provider": provider, "client_id": "cid"}
    if provider == "microsoft":
        base["tenant_id"] = "contoso.onmicrosoft.com"
    base.update(kw)
    return CredentialsConfig(**base)  # type: ignore[arg-type]


def query(url: str) -> dict[str, str]:
    """The query parameters of a URL (single values)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_microsoft_authorization_url_uses_v2_tenant_endpoint_and_pkce():
    """Microsoft: v2.0 authorize endpoint of the tenant, delegated outlook scopes, S256, state, hint."""
    url = MicrosoftProvider(creds()).authorization_url("http://localhost:5000/", "st", "ch", "a@contoso.com")
    assert url.startswith("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize?")
    q = query(url)
    assert q["scope"].split() == ["https://outlook.office.com/SMTP.Send",
                                  "https://outlook.office.com/POP.AccessAsUser.All",
                                  "https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"]
    assert "graph" not in q["scope"].lower() and "User.Read" not in q["scope"]
    assert q | {} == {"client_id": "cid", "response_type": "code", "redirect_uri": "http://localhost:5000/",
                      "scope": q["scope"], "state": "st", "code_challenge": "ch",
                      "code_challenge_method": "S256", "login_hint": "a@contoso.com"}


def test_microsoft_endpoints_and_app_scope():
    """Microsoft token/devicecode endpoints follow the tenant; client credentials use .default."""
    p = MicrosoftProvider(creds(flow="client_credentials", tenant_id="11111111-2222-3333-4444-555555555555"))
    e = p.endpoints()
    assert e.token_url == "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
    assert (e.device_authorization_url or "").endswith("/oauth2/v2.0/devicecode")
    assert e.revocation_url is None
    assert p.scopes() == ("https://outlook.office365.com/.default",)


def test_google_authorization_url_asks_offline_consent():
    """Google: documented auth endpoint, Gmail scope, access_type=offline and prompt=consent."""
    url = GoogleProvider(creds("google")).authorization_url("http://127.0.0.1:8080/", "s", "c")
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    q = query(url)
    assert q["scope"] == "https://mail.google.com/"
    assert q["access_type"] == "offline" and q["prompt"] == "consent"
    assert q["code_challenge_method"] == "S256" and "login_hint" not in q
    assert GoogleProvider(creds("google")).endpoints().token_url == "https://oauth2.googleapis.com/token"


def test_endpoint_overrides_are_honoured_by_builtins():
    """token_url / authorize_url overrides from the YAML replace the built-in endpoints."""
    p = MicrosoftProvider(creds(token_url="https://proxy.example/token", authorize_url="https://proxy.example/a"))
    assert p.endpoints().token_url == "https://proxy.example/token"
    assert p.authorization_url("http://localhost/", "s", "c").startswith("https://proxy.example/a?")
    assert p.endpoints().device_authorization_url.endswith("/devicecode")


def test_yaml_scopes_override_defaults():
    """credentials.scopes replaces the provider's default scopes."""
    assert GoogleProvider(creds("google", scopes=("x", "y"))).scopes() == ("x", "y")


@pytest.mark.parametrize(("provider", "smtp", "pop3"), [
    ("microsoft", ("smtp.office365.com", 587, "starttls"), ("outlook.office365.com", 995, "implicit")),
    ("google", ("smtp.gmail.com", 587, "starttls"), ("pop.gmail.com", 995, "implicit")),
])
def test_default_upstream_endpoints(provider, smtp, pop3):
    """Built-ins carry the documented default SMTP and POP3 endpoints."""
    cls = load_provider_class(provider)
    assert cls.default_smtp is not None and cls.default_pop3 is not None
    assert (cls.default_smtp.host, cls.default_smtp.port, cls.default_smtp.tls) == smtp
    assert (cls.default_pop3.host, cls.default_pop3.port, cls.default_pop3.tls) == pop3


def test_generic_has_no_default_endpoints():
    """The generic provider has no default SMTP/POP3 endpoints."""
    assert GenericProvider.default_smtp is None and GenericProvider.default_pop3 is None


@pytest.mark.parametrize(("provider", "kw", "field"), [
    ("microsoft", {"tenant_id": None}, "tenant_id"),
    ("microsoft", {"flow": "service_account"}, "flow"),
    ("google", {"flow": "device_code"}, "flow"),
    ("google", {"flow": "service_account"}, "service_account_file"),
    ("generic", {}, "token_url"),
    ("generic", {"token_url": "https://t"}, "authorize_url"),
    ("generic", {"token_url": "https://t", "flow": "device_code"}, "device_authorization_url"),
])
def test_config_problems_name_the_field(provider, kw, field):
    """Each provider reports its configuration mistakes with the field to fix."""
    cls = load_provider_class(provider)
    problems = cls.config_problems(creds(provider, **kw))
    assert field in [f for f, _ in problems]


def test_google_device_code_is_refused_with_reason():
    """Google + device_code says the Gmail scope is not allowed there and what to use instead."""
    ((field, message),) = GoogleProvider.config_problems(creds("google", flow="device_code"))
    assert field == "flow" and "mail.google.com" in message and "--manual" in message


def test_valid_configs_have_no_problems():
    """Correct credentials produce no problems."""
    assert MicrosoftProvider.config_problems(creds()) == []
    assert GoogleProvider.config_problems(creds("google")) == []
    assert GenericProvider.config_problems(creds("generic", token_url="t", authorize_url="a")) == []


class MyProvider(OAuthProvider):
    """A user's provider for the registry test."""

    name = "mine"


class NotAProvider:
    """Not derived from OAuthProvider."""


def test_registry_loads_user_class_by_path():
    """'package.module:ClassName' imports the user's OAuthProvider subclass."""
    assert load_provider_class(f"{__name__}:MyProvider") is MyProvider


@pytest.mark.parametrize(("spec", "expected"), [
    ("nosuch", "unknown provider 'nosuch'"),
    ("no_such_module_xyz:Cls", "cannot import module"),
    (f"{__name__}:Missing", "has no attribute 'Missing'"),
    (f"{__name__}:NotAProvider", "not a subclass of relay.providers.base.OAuthProvider"),
])
def test_registry_failures_are_config_errors(spec, expected):
    """Unknown names, import failures and wrong classes raise ConfigError saying what to fix."""
    with pytest.raises(ConfigError, match=expected):
        load_provider_class(spec)

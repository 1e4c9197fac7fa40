"""The README's custom provider example loads through the registry and the config loader."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from relay.configuration import parse_config
from relay.errors import ConfigError
from relay.passwords import hash_password
from relay.providers.registry import load_provider_class

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make docs/examples importable as a user's own module would be."""
    monkeypatch.setattr(sys, "path", [str(EXAMPLES), *sys.path])


def config_with(options: dict[str, str]) -> dict[str, object]:
    """A config using the example provider."""
    return {"token_store": {"key_env": "K"},
            "credentials": {"em": {"provider": "example_mail_provider:ExampleMailProvider", "client_id": "c",
                                   "options": options}},
            "accounts": {"a": {"username": "u", "password_hash": hash_password("p", log2_n=4),
                               "mailbox": "a@example-mail.net", "credentials": "em"}}}


def test_example_provider_loads_and_supplies_defaults() -> None:
    """The class loads by module:Class, its upstream defaults and endpoints are used."""
    cls = load_provider_class("example_mail_provider:ExampleMailProvider")
    config = parse_config(config_with({"region": "us"}), env={})
    account = config.accounts["a"]
    assert (account.smtp.host, account.smtp.port, account.smtp.tls) == (
        "smtp.example-mail.net", 465, "implicit")
    provider = cls(config.credentials["em"])
    url = urlparse(provider.authorization_url("http://localhost:8400/", "st", "ch"))
    query = parse_qs(url.query)
    assert url.netloc == "auth-us.example-mail.net"
    assert query["access_type"] == ["offline"] and query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["mail.submission mail.pop3 offline_access"]


def test_example_provider_reports_its_own_config_problem() -> None:
    """A provider-specific problem is reported at its YAML path."""
    with pytest.raises(ConfigError) as info:
        parse_config(config_with({}), env={})
    assert info.value.problems == [("credentials.em.options.region", "set options.region to 'eu' or 'us'")]

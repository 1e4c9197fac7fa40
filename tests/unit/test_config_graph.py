"""The Graph upstream choice in YAML: send_via, read_via, accounts.X.graph and graph_scopes."""

from __future__ import annotations

from typing import Any

import pytest

from relay.config.model import GraphConfig
from relay.configuration import parse_config
from relay.errors import ConfigError
from relay.passwords import hash_password

HASH = hash_password("pw", log2_n=4)
ENV = {"SECRET": "s"}


def base(**account: Any) -> dict[str, Any]:
    """A valid Microsoft account, with ``account`` keys added."""
    return {
        "credentials": {"contoso": {"provider": "microsoft", "client_id": "abc", "tenant_id": "t.example",
                                    "client_secret": "${SECRET}"},
                        "other": {"provider": "generic", "client_id": "abc", "flow": "client_credentials",
                                  "token_url": "https://auth.example.net/token", "scopes": ["x"]}},
        "accounts": {"sales": {"username": "erp", "password_hash": HASH, "mailbox": "sales@contoso.com",
                               "credentials": "contoso", **account}},
    }


def problems(data: Any) -> list[tuple[str, str]]:
    """The (path, message) problems parse_config reports."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=ENV)
    return info.value.problems


def test_default_is_smtp_and_pop3_without_graph_settings() -> None:
    """Without the keys an account keeps today's upstreams and has no Graph settings."""
    account = parse_config(base(), env=ENV).accounts["sales"]
    assert (account.send_via, account.read_via, account.graph) == ("smtp", "pop3", None)
    assert account.smtp is not None and account.pop3 is not None


def test_graph_both_ways_gets_defaults_and_drops_the_unused_servers() -> None:
    """send_via/read_via graph: Graph defaults filled; the provider's SMTP/POP3 servers are not used."""
    account = parse_config(base(send_via="graph", read_via="graph"), env=ENV).accounts["sales"]
    assert account.graph == GraphConfig(url="https://graph.microsoft.com/v1.0")
    assert account.smtp is None and account.pop3 is None


def test_graph_settings_are_read() -> None:
    """Every graph key is taken from YAML."""
    account = parse_config(base(send_via="graph", graph={
        "url": "https://graph.microsoft.us/v1.0/", "max_request_bytes": 1000000, "max_messages": 50,
        "page_size": 10, "delete": "delete", "timeout_s": 5, "large_messages": "upload_session"}),
        env=ENV).accounts["sales"]
    assert account.graph == GraphConfig(url="https://graph.microsoft.us/v1.0", max_request_bytes=1000000,
                                        max_messages=50, page_size=10, delete="delete", timeout_s=5,
                                        large_messages="upload_session")


@pytest.mark.parametrize(("account", "path", "words"), [
    ({"send_via": "grpah"}, "accounts.sales.send_via", "'grpah' is not one of smtp, graph"),
    ({"read_via": "imap"}, "accounts.sales.read_via", "'imap' is not one of pop3, graph"),
    ({"graph": {"delete": "move"}}, "accounts.sales.graph", "neither send_via nor read_via"),
    ({"send_via": "graph", "graph": {"delete": "purge"}}, "accounts.sales.graph.delete", "move, delete"),
    ({"send_via": "graph", "graph": {"page_sise": 5}}, "accounts.sales.graph.page_sise", "page_size"),
    ({"send_via": "graph", "graph": {"url": "http://graph.example.net"}}, "accounts.sales.graph.url",
     "unencrypted"),
    ({"send_via": "graph", "graph": {"max_request_bytes": 10}}, "accounts.sales.graph.max_request_bytes",
     ">= 65536"),
    ({"read_via": "graph", "graph": {"max_messages": 0}}, "accounts.sales.graph.max_messages", ">= 1"),
    ({"send_via": "graph", "graph": {"large_messages": "split"}}, "accounts.sales.graph.large_messages",
     "refuse, upload_session"),
])
def test_bad_graph_settings_name_their_path(account: dict[str, Any], path: str, words: str) -> None:
    """Each wrong Graph setting is one problem at its YAML path, saying what is wrong."""
    [(got_path, message)] = problems(base(**account))
    assert got_path == path
    assert words in message


def test_provider_without_graph_scopes_needs_graph_scopes() -> None:
    """A generic provider has no Graph scopes: the credentials' graph_scopes is asked for."""
    data = base(send_via="graph", credentials="other", smtp=False, pop3=False)
    [(path, message)] = problems(data)
    assert path == "credentials.other.graph_scopes"
    assert "account 'sales' uses Graph" in message
    data["credentials"]["other"]["graph_scopes"] = ["https://graph.microsoft.com/.default"]
    config = parse_config(data, env=ENV)
    assert config.credentials["other"].graph_scopes == ("https://graph.microsoft.com/.default",)


def test_cloud_sets_the_graph_url_and_scopes() -> None:
    """Microsoft credentials in the US Government cloud: Graph URL and scopes under graph.microsoft.us
    (and no SMTP/POP3 server needed for an account that uses Graph both ways)."""
    data = base(send_via="graph", read_via="graph")
    data["credentials"]["contoso"]["cloud"] = "usgovernment"
    config = parse_config(data, env=ENV)
    account = config.accounts["sales"]
    assert account.graph is not None and account.graph.url == "https://graph.microsoft.us/v1.0"
    from relay.providers.microsoft import MicrosoftProvider

    scopes = MicrosoftProvider(config.credentials["contoso"]).graph_scopes()
    assert scopes == ("https://graph.microsoft.us/Mail.Send", "https://graph.microsoft.us/Mail.ReadWrite",
                      "offline_access")


def test_loopback_http_graph_url_is_allowed() -> None:
    """Plain http is accepted for a loopback Graph (the sandbox)."""
    account = parse_config(base(send_via="graph", graph={"url": "http://127.0.0.1:8080/v1.0"}),
                           env=ENV).accounts["sales"]
    assert account.graph is not None and account.graph.url == "http://127.0.0.1:8080/v1.0"

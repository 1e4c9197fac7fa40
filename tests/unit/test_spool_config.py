"""`delivery: forward | spool` per account and the `spool:` section of the YAML configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.config.model import SpoolConfig
from relay.configuration import parse_config
from relay.errors import ConfigError
from relay.passwords import hash_password

HASH = hash_password("pw", log2_n=4)


def _data(**spool: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "token_store": {"key_env": "RELAY_STORE_KEY", "path": "/var/lib/relay/tokens.enc"},
        "credentials": {"c": {"provider": "microsoft", "client_id": "abc", "tenant_id": "t.example"}},
        "accounts": {"sales": {"username": "erp", "password_hash": HASH, "mailbox": "sales@contoso.com",
                               "credentials": "c", "delivery": "spool"},
                     "ops": {"username": "ops", "password_hash": HASH, "mailbox": "ops@contoso.com",
                             "credentials": "c"}},
    }
    if spool:
        data["spool"] = spool
    return data


def test_defaults_forward_and_exchange_friendly_spool_settings() -> None:
    """delivery defaults to forward; spool defaults fit Exchange Online (30/min, 2 of its 3
    concurrent sessions) and Postfix's 5-day lifetime; the directory sits beside the token store."""
    config = parse_config(_data(), env={})
    assert config.accounts["sales"].delivery == "spool"
    assert config.accounts["ops"].delivery == "forward"
    assert config.spool == SpoolConfig()
    assert (config.spool.max_messages_per_minute, config.spool.max_concurrency) == (30, 2)
    assert config.spool.max_age_s == 5 * 86400
    assert config.spool_directory() == Path("/var/lib/relay/spool")


def test_spool_settings_are_read() -> None:
    """Every spool setting is taken from the YAML."""
    config = parse_config(_data(directory="/data/spool", max_bytes=1000, max_messages=5, max_concurrency=1,
                                max_messages_per_minute=10, max_age_s=60, retry_initial_s=1,
                                retry_max_s=8, bounce_to="postmaster@contoso.com"), env={})
    assert config.spool == SpoolConfig(Path("/data/spool"), 1000, 5, 1, 10, 60, 1, 8,
                                       "postmaster@contoso.com")


@pytest.mark.parametrize(("spool", "account_delivery", "path", "text"), [
    ({}, "store", "accounts.sales.delivery", "not one of forward, spool"),
    ({"max_bytes": 0}, "spool", "spool.max_bytes", ">= 1"),
    ({"bounce_to": "nobody"}, "spool", "spool.bounce_to", "not an email address"),
    ({"retry_initial_s": 100, "retry_max_s": 10}, "spool", "spool.retry_max_s", ">= spool.retry_initial_s"),
    ({"max_age": 5}, "spool", "spool.max_age", "unknown key"),
])
def test_invalid_settings_name_their_yaml_path(spool: dict[str, Any], account_delivery: str, path: str,
                                               text: str) -> None:
    """Problems are reported with the YAML path and what is wrong."""
    data = _data(**spool)
    data["accounts"]["sales"]["delivery"] = account_delivery
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert any(p == path and text in m for p, m in info.value.problems), info.value.problems


def test_spool_with_graph_sending_is_accepted() -> None:
    """delivery: spool combines with send_via: graph (the spool then sends through Graph)."""
    data = _data()
    data["accounts"]["sales"]["send_via"] = "graph"
    config = parse_config(data, env={})
    sales = config.accounts["sales"]
    assert (sales.delivery, sales.send_via) == ("spool", "graph")
    assert sales.graph is not None and sales.graph.url == "https://graph.microsoft.com/v1.0"

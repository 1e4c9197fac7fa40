"""The README's configuration reference and relay.example.yaml cover every configuration key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay.config import model

REPO = Path(__file__).resolve().parents[2]
SECTIONS = [model.ListenerConfig, model.TokenStoreConfig, model.CredentialsConfig, model.AccountConfig,
            model.UpstreamEndpoint, model.LimitsConfig, model.PoolConfig, model.AdminConfig,
            model.AlertsConfig, model.WebhookAlertConfig, model.GraphConfig]


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_every_config_key_is_documented_in_the_readme(cls: type) -> None:
    """Each YAML key (a dataclass field) appears in the README's configuration reference."""
    readme = (REPO / "README.md").read_text()
    reference = readme[readme.index("## Configuration reference"):readme.index("## Troubleshooting")]
    missing = [f.name for f in dataclasses.fields(cls) if f.name != "name" and f"`{f.name}`" not in reference]
    assert missing == []


def test_readme_shows_the_two_commands() -> None:
    """The README's two set-up commands are the demo and the test command that .ci/run runs."""
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -e . && relay demo" in readme
    assert "pip install -e '.[test]' && pytest" in readme
    assert "pip install -e '.[test]' && pytest" in ci

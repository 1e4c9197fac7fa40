"""The README's configuration reference and relay.example.yaml cover every configuration key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay.config import model
from relay.config.schema import yaml_keys

REPO = Path(__file__).resolve().parents[2]
# Every section of the model (a dataclass with declared keys); the top level's keys are the
# README's section names (`listen.smtp`, `accounts.NAME`), checked by the table itself.
SECTIONS = [cls for cls in vars(model).values()
            if isinstance(cls, type) and dataclasses.is_dataclass(cls) and yaml_keys(cls)
            and cls is not model.RelayConfig]


def test_the_sections_are_found() -> None:
    """The section list is derived from the model, so a new section is checked without editing it."""
    assert {model.ListenerConfig, model.CredentialsConfig, model.ProxyConfig,
            model.LimitsConfig, model.AdminConfig, model.AlertsConfig,
            model.WebhookAlertConfig, model.SpoolConfig} <= set(SECTIONS)


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_every_config_key_is_documented_in_the_readme(cls: type) -> None:
    """Each YAML key (a field declared with `key(...)`) appears in the README's configuration reference."""
    readme = (REPO / "README.md").read_text()
    reference = readme[readme.index("## Configuration reference"):readme.index("## Troubleshooting")]
    keys = {*yaml_keys(cls), *yaml_keys(cls, under="smtp")}
    missing = [name for name in keys if f"`{name}`" not in reference]
    assert missing == []


def test_readme_shows_the_two_commands() -> None:
    """The README's two set-up commands are the demo and the test command that .ci/run runs."""
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -e . && relay demo" in readme
    assert "pip install -e '.[test]' && pytest" in readme
    assert "pip install -e '.[test]' && pytest" in ci

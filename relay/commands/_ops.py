"""Helpers shared by the operator commands (serve, check, health, send-test): config and addresses."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from relay.config.model import RelayConfig
from relay.logging_setup import register_secret

DEFAULT_CONFIG = "relay.yaml"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config`` (default: $RELAY_CONFIG or ./relay.yaml)."""
    parser.add_argument("-c", "--config", type=Path,
                        default=Path(os.environ.get("RELAY_CONFIG", DEFAULT_CONFIG)),
                        help=f"the YAML configuration (default: $RELAY_CONFIG or {DEFAULT_CONFIG})")


def load_config_file(path: Path) -> RelayConfig:
    """Load and validate the configuration; register its secrets with the log redaction."""
    from relay.configuration import load_config  # noqa: PLC0415 - keeps `relay --help` fast

    config = load_config(path)
    for creds in config.credentials.values():
        register_secret(creds.client_secret)
    return config


def connect_host(host: str) -> str:
    """The address a local client uses to reach a listener bound to ``host`` (wildcards -> loopback)."""
    if host in ("", "0.0.0.0", "*"):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host

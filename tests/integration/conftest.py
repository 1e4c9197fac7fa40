"""Shared fixtures for integration tests: a running sandbox mail world on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.sandbox.world import SandboxWorld


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxWorld]:
    """A started SandboxWorld (OAuth provider, SMTP with STARTTLS, POP3 with TLS); stopped afterwards."""
    with SandboxWorld.start(tmp_path / "sandbox") as world:
        yield world

"""Fixtures for the provider tests: Microsoft-provider configs pointed at the sandbox, certificates."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provider_helpers import ProviderSetup

from relay.sandbox.world import SandboxWorld
from relay.tokens.store import generate_key


@pytest.fixture
def ms(sandbox: SandboxWorld, tmp_path: Path) -> ProviderSetup:
    """A Microsoft-provider setup at the sandbox with account 'ops' (ops@sandbox.test), not yet written."""
    directory = tmp_path / "ms"
    directory.mkdir()
    key = generate_key()
    (directory / "store.key").write_text(key + "\n")
    (directory / "store.key").chmod(0o600)
    return ProviderSetup(sandbox, directory, key)

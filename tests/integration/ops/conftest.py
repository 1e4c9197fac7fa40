"""Fixtures for the operator-command tests (helpers live in ops_helpers.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ops_helpers import OpsSetup
from support.serve import ServeProcess

from relay.sandbox.world import SandboxWorld


@pytest.fixture
def ops(sandbox: SandboxWorld, tmp_path: Path) -> OpsSetup:
    """An OpsSetup in a fresh directory with account 'ops' (ops@sandbox.test), not yet written."""
    return OpsSetup.fresh(sandbox, tmp_path / "ops")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Factory: start `relay serve` for a config; killed at teardown if still running."""
    started: list[ServeProcess] = []

    def start(config_path: Path, *extra: str) -> ServeProcess:
        proc = ServeProcess(config_path, tmp_path / f"serve{len(started)}.log", *extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()

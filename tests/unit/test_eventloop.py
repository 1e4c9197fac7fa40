"""relay.eventloop: choosing uvloop or asyncio's loop for `relay serve`."""

from __future__ import annotations

import asyncio

import pytest

from relay import eventloop
from relay.errors import ConfigError


def test_auto_prefers_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV_VAR, raising=False)
    assert eventloop.resolve(None, uvloop_installed=True) == "uvloop"
    assert eventloop.resolve("auto", uvloop_installed=False) == "asyncio"


def test_explicit_choice_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV_VAR, "asyncio")
    assert eventloop.resolve(None, uvloop_installed=True) == "asyncio"
    assert eventloop.resolve("uvloop", uvloop_installed=True) == "uvloop"  # the flag wins


def test_unknown_or_missing_loop_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV_VAR, "trio")
    with pytest.raises(ConfigError, match=r"RELAY_EVENT_LOOP.*unknown event loop 'trio'"):
        eventloop.resolve(None)
    with pytest.raises(ConfigError, match=r"--event-loop.*uvloop is not installed"):
        eventloop.resolve("uvloop", uvloop_installed=False)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_run_uses_the_chosen_loop(kind: str) -> None:
    if kind == "uvloop":
        pytest.importorskip("uvloop")

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    module = eventloop.run(loop_module(), kind)
    assert module.startswith("uvloop") == (kind == "uvloop")

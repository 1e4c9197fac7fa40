"""relay.smtp.fastinit: aiosmtpd builds the same per-connection tables with the cached introspection."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import aiosmtpd.smtp as aiosmtpd_smtp
import pytest

from relay.smtp import fastinit
from relay.smtp.session import RelaySMTP


class Handler:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        return responses

    async def handle_MAIL(self, *args: Any) -> str:
        return "250 OK"

    async def auth_CUSTOM(self, server: Any, args: list[str]) -> Any:  # a handler-provided mechanism
        return None


class OldEhloHandler:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        return "250 x"


def _tables(proto: RelaySMTP) -> dict[str, object]:
    return {
        "auth": {name: (attr.is_builtin, getattr(attr.method, "__func__", attr.method))
                 for name, attr in proto._auth_methods.items()},
        "hooks": sorted(proto._handle_hooks),
        "smtp": sorted(proto._smtp_methods),
        "ehlo": proto._ehlo_hook_ver,
    }


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _build(handler: object, cached: bool, monkeypatch: pytest.MonkeyPatch,
           loop: asyncio.AbstractEventLoop) -> RelaySMTP:
    monkeypatch.setattr(fastinit, "ENABLED", cached)
    return RelaySMTP(handler, hostname="relay.test", loop=loop)


def test_the_installed_aiosmtpd_is_one_the_shortcut_was_checked_for() -> None:
    assert fastinit.ENABLED, "aiosmtpd changed: re-check SMTP.__init__ and extend fastinit.SUPPORTED"


@pytest.mark.parametrize("handler", [Handler(), OldEhloHandler()], ids=["current", "4-arg EHLO"])
def test_cached_and_plain_construction_build_the_same_tables(
        handler: object, monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop) -> None:
    def warns() -> contextlib.AbstractContextManager[object]:
        old = isinstance(handler, OldEhloHandler)
        return pytest.warns(DeprecationWarning) if old else contextlib.nullcontext()

    with warns():
        plain = _tables(_build(handler, False, monkeypatch, loop))
    with warns():
        cached = _tables(_build(handler, True, monkeypatch, loop))
    assert cached == plain
    assert "CUSTOM" in plain["auth"] or isinstance(handler, OldEhloHandler)
    assert {"PLAIN", "LOGIN"} <= set(plain["auth"])  # type: ignore[arg-type]


def test_methods_are_bound_to_their_own_connection(monkeypatch: pytest.MonkeyPatch,
                                                   loop: asyncio.AbstractEventLoop) -> None:
    first, second = _build(Handler(), True, monkeypatch, loop), _build(Handler(), True, monkeypatch, loop)
    assert first._auth_methods["PLAIN"].method.__self__ is first
    assert second._auth_methods["PLAIN"].method.__self__ is second
    assert first._smtp_methods["MAIL"].__self__ is first


def test_inspect_is_restored_even_when_construction_fails(loop: asyncio.AbstractEventLoop) -> None:
    class Broken:
        async def handle_EHLO(self) -> None:  # unsupported signature: aiosmtpd raises
            return None

    with pytest.raises(RuntimeError, match="Unsupported EHLO Hook"):
        RelaySMTP(Broken(), hostname="relay.test", loop=loop)
    assert aiosmtpd_smtp.inspect is inspect

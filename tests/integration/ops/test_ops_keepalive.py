"""Idle grants are kept alive: refreshed every limits.token_keepalive_days even without traffic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from support.relay_harness import (
    authorized_token_set,
    fresh_store,
    loopback,
    relay_config,
    sandbox_credentials,
    sandbox_pop3_upstream,
    sandbox_smtp_upstream,
)

from relay.config.model import AccountConfig, LimitsConfig
from relay.metrics import RelayMetrics
from relay.sandbox.world import SandboxWorld
from relay.tokens.manager import TokenManager

DAY_S = 86400


def _account(sandbox: SandboxWorld) -> AccountConfig:
    return AccountConfig(name="idle", username="idle-app", password_hash=None, mailbox="idle@sandbox.test",
                         credentials="sandbox", smtp=sandbox_smtp_upstream(sandbox),
                         pop3=sandbox_pop3_upstream(sandbox))


@pytest.mark.parametrize(("idle_days", "refreshed"), [(8, True), (6, False)])
async def test_idle_grant_is_refreshed_after_keepalive_days(sandbox: SandboxWorld, tmp_path: Path,
                                                            idle_days: int, refreshed: bool) -> None:
    """A grant last refreshed 8 days ago (access token still valid for an hour) is refreshed by the
    background pass with the 7-day default; one refreshed 6 days ago is left alone."""
    config = relay_config(accounts=[_account(sandbox)], credentials=sandbox_credentials(sandbox),
                          token_store=tmp_path / "t.enc", limits=LimitsConfig(),
                          smtp_listener=loopback(), pop3_listener=loopback())
    assert config.limits.token_keepalive_days == 7
    store = fresh_store(tmp_path / "t.enc")
    seeded = authorized_token_set(sandbox.oauth, "idle", "idle@sandbox.test", expires_in_s=3600,
                                  obtained_ago_s=idle_days * DAY_S)
    await store.put(seeded)
    manager = TokenManager(config, store)
    metrics = RelayMetrics(["idle"])
    manager.observer = metrics
    before = sandbox.oauth.counters.get("refresh_requests", 0)
    try:
        assert (await manager.refresh_due() == ["idle"]) is refreshed
    finally:
        await manager.close()
    after = sandbox.oauth.counters.get("refresh_requests", 0)
    assert after - before == (1 if refreshed else 0)
    stored = await store.get("idle")
    assert stored is not None
    assert (stored.obtained_at > seeded.obtained_at) is refreshed
    assert (metrics.activity["idle"].last_refresh_outcome == "ok") is refreshed


async def test_keepalive_setting_is_honoured(sandbox: SandboxWorld, tmp_path: Path) -> None:
    """limits.token_keepalive_days: 1 refreshes a grant idle for two days."""
    config = relay_config(accounts=[_account(sandbox)], credentials=sandbox_credentials(sandbox),
                          token_store=tmp_path / "t.enc",
                          limits=replace(LimitsConfig(), token_keepalive_days=1),
                          smtp_listener=loopback(), pop3_listener=loopback())
    store = fresh_store(tmp_path / "t.enc")
    await store.put(authorized_token_set(sandbox.oauth, "idle", "idle@sandbox.test",
                                         obtained_ago_s=2 * DAY_S))
    manager = TokenManager(config, store)
    try:
        assert await manager.refresh_due() == ["idle"]
    finally:
        await manager.close()

"""Per-resource tokens from one grant: the TokenManager against the sandbox OAuth provider."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.relay_harness import authorized_token_set, fresh_store

from relay.configuration import parse_config
from relay.sandbox.graph import GRAPH_SCOPES
from relay.sandbox.world import SandboxWorld
from relay.tokens.manager import TokenManager
from relay.tokens.source import GRAPH

from .conftest import MAILBOX, graph_yaml


def manager(world: SandboxWorld, tmp_path: Path) -> TokenManager:
    """A TokenManager for the Graph account, its store seeded as after `relay authorize`."""
    config = parse_config(graph_yaml(world, tmp_path), env={"RELAY_TEST_STORE_KEY": "x"})
    store = fresh_store(tmp_path / "tokens.enc")
    asyncio.run(store.put(authorized_token_set(world.oauth, "sales", MAILBOX)))
    return TokenManager(config, store, retry_attempts=1)


def refreshes(world: SandboxWorld) -> int:
    """Refresh-token grants the sandbox has served."""
    return world.oauth.counters.get("refresh_requests", 0)


def test_graph_token_is_separate_cached_and_single_flight(world: SandboxWorld, tmp_path: Path) -> None:
    """The Graph token carries the Graph scopes, is cached apart from the SMTP/POP3 token, and five
    concurrent callers cause one token request."""
    tokens = manager(world, tmp_path)

    async def run() -> None:
        before = refreshes(world)
        graph = await asyncio.gather(*(tokens.get_token("sales", GRAPH) for _ in range(5)))
        assert len(set(graph)) == 1 and refreshes(world) - before == 1
        assert await tokens.get_token("sales", GRAPH) == graph[0]  # cached
        mail = await tokens.get_token("sales")
        assert mail != graph[0]
        info = world.oauth.grants.lookup_access(graph[0].reveal())
        assert info is not None and info.scope == " ".join(GRAPH_SCOPES)
        forced = await tokens.force_refresh("sales", graph[0], GRAPH)
        assert forced != graph[0] and await tokens.get_token("sales", GRAPH) == forced
        await tokens.close()

    asyncio.run(run())


def test_rotated_refresh_token_from_a_graph_request_is_stored(world: SandboxWorld, tmp_path: Path) -> None:
    """With rotation, the Graph request's new refresh token replaces the stored one (the old one is
    dead), so the account's SMTP/POP3 refresh keeps working."""
    tokens = manager(world, tmp_path)
    world.oauth.rotate_refresh_tokens = True
    try:
        async def run() -> None:
            old = (await tokens.store.get("sales"))
            assert old is not None
            await tokens.get_token("sales", GRAPH)
            new = await tokens.store.get("sales")
            assert new is not None and new.refresh_token != old.refresh_token
            assert new.access_token == old.access_token  # the SMTP/POP3 token is untouched
            await tokens.force_refresh("sales", old.access_token)  # uses the rotated refresh token
            await tokens.close()

        asyncio.run(run())
    finally:
        world.oauth.rotate_refresh_tokens = False

"""Three real `relay serve` processes sharing one redis-server and one grant (issue 17).

The replicas are started by the CLI as an operator would, with `token_store: {backend: redis}`;
the sandbox provider counts every token request and, in strict-rotation mode, every reuse of a
rotated refresh token (which revokes the grant, as Auth0 and Okta do).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.app_harness import wait_until
from support.redis_server import RedisServer

from relay.sandbox.world import SandboxWorld

from .replica_helpers import (  # type: ignore[import-not-found]
    Cluster,
    Load,
    burst,
    cluster_in,
    session,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxWorld]:
    """The sandbox (OAuth, SMTP, POP3) for the module."""
    with SandboxWorld.start(tmp_path_factory.mktemp("sandbox")) as w:
        yield w


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own per test (some tests stop and restart it)."""
    srv = RedisServer.start(tmp_path / "redis")
    yield srv
    srv.stop()


@pytest.fixture
def cluster(world: SandboxWorld, redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster definition (no replica started yet); the sandbox's knobs reset afterwards."""
    yield from cluster_in(world, redis_server, tmp_path / "cluster")
    world.oauth.hang_token_endpoint = False
    world.oauth.settings.strict_rotation = False
    world.oauth.rotate_refresh_tokens = False


def _token_requests(world: SandboxWorld) -> int:
    return world.oauth.counters.get("token_requests", 0)


def _revoke_access_tokens(world: SandboxWorld) -> None:
    """The provider revokes every live access token (the upstream then answers 535 to them)."""
    grants = world.oauth.grants
    with grants.lock:
        for info in grants.access.values():
            info.revoked = True


def test_cold_burst_of_300_sessions_makes_exactly_one_token_request(cluster: Cluster,
                                                                    world: SandboxWorld) -> None:
    """Expired tokens in Redis, 300 concurrent sessions spread over 3 replicas: all delivered, and
    the provider saw exactly one token request (one lease holder; the others waited for it)."""
    cluster.seed(expires_in_s=-60)
    # Counted from before the start: a replica's background refresher may take the lease and make
    # the one request at start-up, before the burst; still exactly one across all three.
    before, requests = len(world.smtp.messages()), _token_requests(world)
    cluster.start(3)
    codes = burst(cluster.ports(), 300, workers=30)
    assert codes.count(250) == 300, sorted(set(codes))
    assert _token_requests(world) - requests == 1
    assert len(world.smtp.wait_for_messages(before + 300, timeout_s=30)) >= before + 300


def test_lease_holder_killed_mid_refresh_another_replica_takes_over(cluster: Cluster,
                                                                    world: SandboxWorld) -> None:
    """The replica holding the lease is SIGKILLed while the token endpoint hangs: after the lease
    expires another replica refreshes, every session on the survivors is delivered."""
    cluster.lease_ttl_s = 2.0
    cluster.seed(expires_in_s=-60)
    requests = _token_requests(world)
    world.oauth.hang_token_endpoint = True
    (holder,) = cluster.start(1)  # its background refresher takes the lease, the endpoint hangs
    wait_until(lambda: _token_requests(world) > requests, 20, "the first token request")
    survivors = cluster.start(2)
    first = threading.Thread(target=session, args=(holder.ports["smtp"], 0), daemon=True)
    first.start()  # a session waiting on the holder's refresh: it dies with it
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(10)
    world.oauth.hang_token_endpoint = False  # the dead holder's request is answered into the void
    before = len(world.smtp.messages())
    ports = [p.ports["smtp"] for p in survivors]
    start = time.monotonic()
    codes = burst(ports, 40, workers=20, start=1)
    assert codes.count(250) == 40, sorted(set(codes))
    assert time.monotonic() - start < 20
    assert _token_requests(world) - requests == 2  # the killed holder's and one takeover
    assert len(world.smtp.wait_for_messages(before + 40, timeout_s=30)) >= before + 40


def test_strict_rotation_50_cycles_never_reuse_a_refresh_token(cluster: Cluster, world: SandboxWorld) -> None:
    """Strict rotation: 50 times the provider revokes the access token and every replica's next
    session needs a new one: 50 refreshes in all, each by one replica, and 0 reuse detections."""
    world.oauth.settings.strict_rotation = True
    cluster.seed(expires_in_s=3600)
    cluster.start(3)
    ports = cluster.ports()
    detections = world.oauth.grants.reuse_detections
    refreshes = world.oauth.counters.get("refresh_requests", 0)
    for cycle in range(50):
        _revoke_access_tokens(world)
        codes = burst(ports, 3, workers=3, start=cycle * 3)
        assert codes == [250, 250, 250], f"cycle {cycle}: {codes}"
    assert world.oauth.grants.reuse_detections == detections
    assert world.oauth.counters["refresh_requests"] - refreshes == 50


def test_redis_down_under_load_then_back_without_a_storm(cluster: Cluster, world: SandboxWorld,
                                                        redis_server: RedisServer) -> None:
    """Redis is killed under load until every replica met the outage and 20 sessions ran: 0 failed
    sessions on held tokens; restarted empty, the held tokens are stored again and the next forced
    refresh is a single token request."""
    cluster.seed(expires_in_s=3600)
    cluster.start(3)
    requests = _token_requests(world)
    load = Load(cluster.ports())
    worker = threading.Thread(target=load.run, daemon=True)
    worker.start()
    wait_until(lambda: len(load.codes) >= 10, 30, "load before the outage")
    redis_server.stop(kill=True)
    during = len(load.codes)
    # The outage lasts until every replica has met it (each logs that it serves from memory) and
    # 20 more sessions ran: the load must not stall meanwhile.
    wait_until(lambda: len(load.codes) - during >= 20 and all(
        "serving the tokens held in memory" in p.output() for p in cluster.replicas), 30,
        "20 sessions during the outage, every replica serving from memory")
    redis_server.start_again()
    after = len(load.codes)
    wait_until(lambda: len(load.codes) >= after + 20 and all(
        "reachable again" in p.output() for p in cluster.replicas), 30, "every replica back on Redis")
    load.stop = True
    worker.join(30)
    assert load.codes.count(250) == len(load.codes), sorted(set(load.codes))
    assert _token_requests(world) == requests  # valid tokens: no refresh, no storm on return
    reseeded = sum(p.output().count("storing the ones held in memory again") for p in cluster.replicas)
    assert reseeded >= 1
    _revoke_access_tokens(world)
    codes = burst(cluster.ports(), 30, workers=15, start=500)
    assert codes.count(250) == 30, sorted(set(codes))
    assert _token_requests(world) - requests == 1

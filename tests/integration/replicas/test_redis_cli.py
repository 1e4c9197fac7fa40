"""Every command on the Redis store, and bad Redis settings named in the error (issue 17)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml
from support.redis_server import RedisServer, free_port

from relay.sandbox.world import SandboxWorld
from relay.tokens.keys import write_key_file

from .replica_helpers import ACCOUNT, Cluster, cluster_in  # type: ignore[import-not-found]

REPO = Path(__file__).resolve().parents[3]


def relay(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a relay command (this worktree's code) and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RELAY_TEST_REDIS_PW": "redis-secret-pw"}
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxWorld]:
    """The sandbox for the module."""
    with SandboxWorld.start(tmp_path_factory.mktemp("sandbox")) as w:
        yield w


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module."""
    srv = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


@pytest.fixture
def cluster(world: SandboxWorld, redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster definition with its own key and prefix."""
    yield from cluster_in(world, redis_server, tmp_path / "cluster")


async def _raw_record(url: str, key: str) -> dict[bytes, bytes]:
    client = aioredis.Redis.from_url(url)
    try:
        return await client.hgetall(key)  # type: ignore[return-value]
    finally:
        await client.aclose()


def test_tokens_export_import_round_trip_and_revoke(cluster: Cluster, redis_server: RedisServer,
                                                    tmp_path: Path) -> None:
    """`relay tokens` and `relay check` read the Redis store; export writes an encrypted 0600
    file; import into an empty prefix restores it; `relay revoke` forgets the account in Redis."""
    seeded = cluster.seed(expires_in_s=3600)
    config = cluster.write_config()
    shown = relay("tokens", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert ACCOUNT in shown.stdout and "valid" in shown.stdout
    checked = relay("check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    backup = tmp_path / "backup.enc"
    out = relay("tokens", "export", "--to", str(backup), "-c", str(config))
    assert out.returncode == 0, out.stderr
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    assert seeded.access_token.reveal().encode() not in backup.read_bytes()
    again = relay("tokens", "export", "--to", str(backup), "-c", str(config))
    assert again.returncode != 0 and "never overwrites" in again.stderr
    other = cluster.write_config("other.yaml", key_prefix=cluster.prefix + "restored:")
    imported = relay("tokens", "import", "--from", str(backup), "-c", str(other))
    assert imported.returncode == 0, imported.stderr
    assert "valid" in relay("tokens", "-c", str(other)).stdout
    assert relay("revoke", ACCOUNT, "-c", str(config)).returncode == 0
    record = asyncio.run(_raw_record(redis_server.url, f"{cluster.prefix}tokens:{ACCOUNT}"))
    assert record[b"blob"] == b"" and int(record[b"v"]) == 2


@pytest.mark.parametrize("case", ["scheme", "unreachable", "password", "other-key"])
def test_bad_redis_settings_are_named_and_nothing_is_overwritten(cluster: Cluster, redis_server: RedisServer,
                                                                 tmp_path: Path, case: str) -> None:
    """A wrong URL, a server nobody listens on, one that needs a password, or records written with
    another key: `relay tokens`/`import` fail naming the setting, and the stored record is intact."""
    cluster.seed(expires_in_s=3600)
    record_key = f"{cluster.prefix}tokens:{ACCOUNT}"
    before = asyncio.run(_raw_record(redis_server.url, record_key))
    if case == "scheme":
        config, setting = cluster.write_config("bad.yaml", url="http://127.0.0.1:6379/0"), "token_store.url"
    elif case == "unreachable":
        config = cluster.write_config("bad.yaml", url=f"redis://127.0.0.1:{free_port()}/0")
        setting = "token_store.url: cannot reach Redis"
    elif case == "password":
        secured = RedisServer.start(tmp_path / "pw", password="redis-secret-pw")
        config = cluster.write_config("bad.yaml", url=secured.url)
        setting = "token_store.password"
    else:
        write_key_file(tmp_path / "other.key")
        config = cluster.write_config("bad.yaml", key_file=str(tmp_path / "other.key"))
        setting = "key_env / key_file"
    try:
        result = relay("tokens", "-c", str(config))
        assert result.returncode != 0
        assert setting in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        backup = cluster.dir / "b.enc"
        if not backup.exists():
            assert relay("tokens", "export", "--to", str(backup), "-c",
                         str(cluster.write_config())).returncode == 0
        imported = relay("tokens", "import", "--from", str(backup), "-c", str(config))
        assert imported.returncode != 0
        assert asyncio.run(_raw_record(redis_server.url, record_key)) == before
        if case == "password":  # with the password (via ${ENV}) the same server works
            data = yaml.safe_load(config.read_text())
            data["token_store"]["password"] = "${RELAY_TEST_REDIS_PW}"
            config.write_text(yaml.safe_dump(data))
            ok = relay("tokens", "-c", str(config))
            assert ok.returncode == 0, ok.stderr
            assert "redis-secret-pw" not in ok.stdout + ok.stderr
    finally:
        if case == "password":
            secured.stop()

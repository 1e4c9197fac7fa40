"""Several real `relay serve` processes sharing one redis-server, in front of the sandbox."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from support.redis_server import RedisServer
from support.serve import ServeProcess

from relay.passwords import hash_password
from relay.sandbox.oauth import DEFAULT_SCOPE
from relay.sandbox.world import SandboxWorld
from relay.secret import Secret
from relay.tokens.keys import decode_key, write_key_file
from relay.tokens.model import TokenSet
from relay.tokens.redis_store import RedisTokenStore

ACCOUNT = "shared"
USERNAME = "shared-app"
PASSWORD = "replica test password 7"
MAILBOX = "shared@sandbox.test"


@dataclass
class Cluster:
    """N replicas with one configuration (own listeners), one Redis, one grant."""

    world: SandboxWorld
    redis: RedisServer
    dir: Path
    prefix: str
    lease_ttl_s: float = 30.0
    replicas: list[ServeProcess] = field(default_factory=list)

    @property
    def key_file(self) -> Path:
        """The store key shared by the replicas (as a Kubernetes Secret would be)."""
        return self.dir / "store.key"

    def key(self) -> bytes:
        """The AEAD key."""
        return decode_key(self.key_file.read_text(), "test")

    def config_data(self, **store: Any) -> dict[str, Any]:
        """The YAML mapping; ``store`` overrides token_store settings."""
        token_store = {"backend": "redis", "url": self.redis.url, "key_prefix": self.prefix,
                       "key_env": None, "key_file": str(self.key_file), "lease_ttl_s": self.lease_ttl_s,
                       **store}
        return {
            "listen": {"smtp": {"enabled": True, "host": "127.0.0.1", "port": 0, "tls": "none"},
                       "pop3": {"enabled": True, "host": "127.0.0.1", "port": 0, "tls": "none"}},
            "token_store": token_store,
            "credentials": self.world.credentials_yaml("sandbox"),
            "accounts": {ACCOUNT: self.world.account_yaml(USERNAME, hash_password(PASSWORD, log2_n=4),
                                                          MAILBOX)},
            "limits": {"auth_failure_delay_s": 0.05, "shutdown_grace_s": 5,
                       "upstream_connect_timeout_s": 10, "upstream_command_timeout_s": 20},
        }

    def write_config(self, name: str = "relay.yaml", **store: Any) -> Path:
        """Write a configuration file and return its path."""
        path = self.dir / name
        path.write_text(yaml.safe_dump(self.config_data(**store), sort_keys=False))
        return path

    def seed(self, *, expires_in_s: float) -> TokenSet:
        """Store tokens for the account in Redis, as `relay authorize` would (negative: expired)."""
        now = datetime.now(UTC)
        tokens = TokenSet(account=ACCOUNT, credentials="sandbox",
                          access_token=Secret(self.world.oauth.issue_access_token(MAILBOX)),
                          expires_at=now + timedelta(seconds=expires_in_s),
                          refresh_token=Secret(self.world.oauth.issue_refresh_token(MAILBOX)),
                          scopes=tuple(DEFAULT_SCOPE.split()), obtained_at=now - timedelta(hours=1))

        async def put() -> None:
            store = await RedisTokenStore(self.redis.url, self.key(), key_prefix=self.prefix).open()
            try:
                await store.put(tokens)
            finally:
                await store.close()

        asyncio.run(put())
        return tokens

    def start(self, n: int = 3) -> list[ServeProcess]:
        """Start ``n`` `relay serve` processes and wait until each listens."""
        config = self.write_config()
        for _ in range(n):
            proc = ServeProcess(config, self.dir / f"replica{len(self.replicas)}.log")
            self.replicas.append(proc)
        for proc in self.replicas[-n:]:
            proc.wait_listening()
        return self.replicas[-n:]

    def ports(self) -> list[int]:
        """The SMTP ports of the replicas still running."""
        return [p.ports["smtp"] for p in self.replicas if p.proc.poll() is None]

    def close(self) -> None:
        """Stop every replica."""
        for proc in self.replicas:
            proc.close()


def session(port: int, n: int) -> int:
    """One SMTP session: login, one message; the final reply code (or 0 when the connection broke)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login(USERNAME, PASSWORD)
            client.sendmail(MAILBOX, ["to@example.test"], f"Subject: n{n}\r\n\r\nbody {n}\r\n")
            return 250
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    except smtplib.SMTPRecipientsRefused as exc:
        return next(iter(exc.recipients.values()))[0]
    except (OSError, smtplib.SMTPException):
        return 0


def burst(ports: list[int], count: int, *, workers: int = 30, start: int = 0) -> list[int]:
    """``count`` sessions spread round-robin over ``ports``, ``workers`` at a time; reply codes."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: session(ports[i % len(ports)], start + i), range(count)))


@dataclass
class Load:
    """Sessions in a loop against every replica until stopped; counts codes."""

    ports: list[int]
    codes: list[int] = field(default_factory=list)
    stop: bool = False

    def run(self) -> None:
        """Loop (in a thread)."""
        n = 0
        while not self.stop:
            self.codes.append(session(self.ports[n % len(self.ports)], 100_000 + n))
            n += 1


def cluster_in(world: SandboxWorld, redis: RedisServer, directory: Path, **kw: Any) -> Iterator[Cluster]:
    """A Cluster with a new key file and its own key prefix; replicas stopped afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    write_key_file(directory / "store.key")
    cluster = Cluster(world, redis, directory, prefix=f"c{time.monotonic_ns()}:", **kw)
    try:
        yield cluster
    finally:
        cluster.close()

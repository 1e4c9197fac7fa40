"""Runs a POP3 proxy in its own process so a test can measure the proxy's memory alone.

Reads one JSON object on stdin (upstream endpoint, mailbox, local login, an access token), prints
``PORT <n>`` once listening, and serves until stdin is closed. Not a test module.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from relay.config.model import (
    AccountConfig,
    LimitsConfig,
    ListenConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.localauth import LocalAuthenticator
from relay.passwords import hash_password
from relay.pop3.server import Pop3ProxyServer
from relay.secret import Secret


class FixedTokens:
    """A TokenSource handing out one access token issued by the parent process."""

    def __init__(self, token: str) -> None:
        self._token = Secret(token)

    async def get_token(self, account: str) -> Secret:
        return self._token

    async def force_refresh(self, account: str, rejected: Secret | None = None) -> Secret:
        return self._token


async def main() -> None:
    spec = json.loads(sys.stdin.readline())
    up = spec["upstream"]
    endpoint = UpstreamEndpoint(up["host"], up["port"], up["tls"],
                                ca_file=Path(up["ca_file"]) if up.get("ca_file") else None)
    # A cheap scrypt cost keeps the KDF's memory out of the measurement; the check is the real one.
    password_hash = hash_password(spec["password"], log2_n=10)
    account = AccountConfig(name="big", username=spec["username"], password_hash=password_hash,
                            mailbox=spec["mailbox"], credentials="sandbox", smtp=None, pop3=endpoint)
    config = RelayConfig(
        listen=ListenConfig(smtp=ListenerConfig(False, "127.0.0.1", 0),
                            pop3=ListenerConfig(True, "127.0.0.1", 0)),
        token_store=TokenStoreConfig(Path("unused")), credentials={}, accounts={"big": account},
        limits=LimitsConfig(),
    )
    server = Pop3ProxyServer(config, FixedTokens(spec["token"]), LocalAuthenticator(config))
    await server.start()
    print(f"PORT {server.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main())

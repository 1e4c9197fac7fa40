"""A relay (SMTP + POP3 + TokenManager) in its own process, for signal, restart and memory tests.

Usage: ``python rel_relay_child.py SPEC.json``; the spec names the upstreams, the store and the
login; the store key comes from $RELAY_STORE_KEY. Prints ``PORTS <smtp> <pop3>`` once listening.
SIGTERM stops gracefully (sessions finish within ``grace_s``), like `relay serve`. Not a test module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for support/

from support.relay_harness import loopback, relay_config

from relay import eventloop
from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    LimitsConfig,
    ListenerConfig,
    UpstreamEndpoint,
)
from relay.pop3.server import Pop3ProxyServer
from relay.smtp.server import SmtpRelayServer
from relay.tokens.manager import TokenManager
from relay.tokens.store import open_store


class OneLogin:
    """Authenticator for one local login (plain compare; the password module is tested elsewhere)."""

    def __init__(self, account: AccountConfig, password: str) -> None:
        self.account = account
        self.password = password

    async def authenticate(self, username: str, password: str, client_ip: str) -> AccountConfig | None:
        ok = username == self.account.username and password == self.password
        return self.account if ok else None

    def plaintext_auth_allowed(self, listener: ListenerConfig, client_ip: str, tls_active: bool) -> bool:
        return tls_active or ipaddress.ip_address(client_ip).is_loopback

    def trusted_account_for(self, client_ip: str) -> AccountConfig | None:
        return None


async def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    ca = Path(spec["ca_file"])
    account = AccountConfig(
        name="rel", username=spec["username"], password_hash=None, mailbox=spec["mailbox"],
        credentials="sandbox",
        smtp=UpstreamEndpoint("127.0.0.1", spec["smtp_port"], "starttls", ca_file=ca),
        pop3=UpstreamEndpoint("127.0.0.1", spec["pop3_port"], "implicit", ca_file=ca))
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=spec["client_id"],
                              scopes=tuple(spec["scopes"]), token_url=spec["token_url"])
    config = relay_config(
        accounts=[account], credentials=creds, token_store=Path(spec["store"]),
        smtp_listener=loopback(port=spec.get("listen_smtp", 0)),
        pop3_listener=loopback(port=spec.get("listen_pop3", 0)),
        limits=LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                            upstream_command_timeout_s=10, upstream_data_timeout_s=10,
                            smtp_command_timeout_s=spec.get("command_timeout_s", 300.0),
                            pop3_idle_timeout_s=spec.get("command_timeout_s", 600.0)))
    tokens = TokenManager(config, open_store(config.token_store), retry_attempts=1)
    auth = OneLogin(account, spec["password"])
    smtp = SmtpRelayServer(config, tokens, auth, hostname="relay.test")
    pop3 = Pop3ProxyServer(config, tokens, auth)  # type: ignore[arg-type]
    await smtp.start()
    await pop3.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"PORTS {smtp.port} {pop3.port}", flush=True)
    await stop.wait()
    grace_s = float(spec.get("grace_s", 10.0))
    await asyncio.gather(smtp.stop(grace_s), pop3.stop(grace_s))
    await tokens.close()
    return 0


if __name__ == "__main__":
    sys.exit(eventloop.run(main(), eventloop.resolve(None)))  # the loop `relay serve` runs on

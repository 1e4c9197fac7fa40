"""One account's RelayApp (relay.yaml, only the IMAP listener) in front of the sandbox IMAP upstream:
the setup the sandbox-upstream and the observability tests share."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from support.app_harness import AppRelay, seed_accounts, start_app_relay
from support.relay_harness import authorized_token_set, loopback, relay_config, sandbox_credentials

from relay.config.model import AccountConfig, LimitsConfig, ListenConfig, UpstreamEndpoint
from relay.config.sections import AdminConfig
from relay.passwords import hash_password
from relay.sandbox.world import SandboxWorld
from relay.tokens.store import generate_key


def start_sandbox_imap_relay(world: SandboxWorld, base: Path, *, name: str, username: str, password: str,
                             mailbox: str, admin: AdminConfig | None = None) -> AppRelay:
    """Account ``name`` (local login ``username``/``password``, upstream the sandbox's IMAP over TLS,
    a fresh authorized token) behind a started RelayApp; ``admin``: also the admin listener."""
    account = AccountConfig(name=name, username=username, password_hash=hash_password(password, log2_n=10),
                            mailbox=mailbox, credentials="sandbox", smtp=None, pop3=None,
                            imap=UpstreamEndpoint(world.host, world.imap_port, "implicit",
                                                  ca_file=world.ca_file))
    config = relay_config(accounts=[account], credentials=sandbox_credentials(world),
                          token_store=base / "tokens.enc", limits=LimitsConfig(auth_failure_delay_s=0),
                          smtp_listener=loopback(False), pop3_listener=loopback(False))
    config = replace(config, listen=ListenConfig(smtp=loopback(False), pop3=loopback(False),
                                                 imap=loopback(True)), admin=admin)
    key = generate_key()
    seed_accounts(config, key, {name: authorized_token_set(world.oauth, name, mailbox, obtained_ago_s=0)})
    return start_app_relay(config, base, key=key, name=f"{name}-imap-relay")

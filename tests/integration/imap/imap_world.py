"""A private Dovecot IMAP (oauth2 passdb, LMTP for delivery) and the relay's IMAP listeners.

Dovecot is real_servers.DovecotServer serving IMAP (PROTOCOLS.md section 8, the recipe the POP3
real-server tests use); it checks XOAUTH2 tokens at the sandbox OAuth provider. The relay is a
RelayApp started from relay.yaml (tests/support/app_harness.py) with several accounts, one per
test, so one Dovecot and one relay serve a whole test module. RelayApp has one IMAP listener, so
the plain, STARTTLS and TLS-on-connect variants are three RelayApps over copies of one token store.
"""

from __future__ import annotations

import functools
import imaplib
import os
import ssl
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "real"))

from real_servers import DovecotServer, make_base_dir, make_cert_dir, require_root
from support.app_harness import AppRelay, seed_accounts, start_app_relay
from support.relay_harness import authorized_token_set, relay_config

from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    LimitsConfig,
    ListenConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.passwords import hash_password
from relay.sandbox.loop import LoopThread
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, SandboxOAuthProvider
from relay.tokens.manager import TokenManager
from relay.tokens.store import generate_key

PASSWORD = "imap horse battery"
TIMEOUT_S = 30.0
ACCOUNTS = 16
MAIL_DOMAIN = "example.com"
LISTENER_TLS = ("none", "starttls", "implicit")


@functools.cache
def password_hash() -> str:
    """The hash of PASSWORD, computed once (all accounts share it)."""
    return hash_password(PASSWORD, log2_n=10)


def user(i: int) -> str:
    """Local login of account ``i``."""
    return f"imapuser{i}"


def mailbox(i: int) -> str:
    """Upstream mailbox of account ``i``."""
    return f"imap{i}-{os.getpid()}@{MAIL_DOMAIN}"


@dataclass
class ImapRelay:
    """The relay's IMAP listeners (plain, STARTTLS, implicit TLS): one RelayApp each."""

    apps: dict[str, AppRelay]
    next_account: int = 0

    @property
    def ports(self) -> dict[str, int]:
        """The IMAP port of each listener variant ("none", "starttls", "implicit")."""
        return {tls: relay.imap_port for tls, relay in self.apps.items()}

    @property
    def servers(self) -> dict[str, Any]:
        """The running IMAP listener of each variant, for tests that inspect or tune its state."""
        return {tls: relay.server("imap") for tls, relay in self.apps.items()}

    @property
    def main(self) -> AppRelay:
        """The relay most tests use: the plain listener's (else the first started)."""
        return self.apps.get("none") or next(iter(self.apps.values()))

    @property
    def config(self) -> RelayConfig:
        """The running configuration of the main relay."""
        return self.main.config

    @property
    def tokens(self) -> TokenManager:
        """The main relay's token manager."""
        return self.main.tokens

    @property
    def loop(self) -> LoopThread:
        """The main relay's loop thread."""
        return self.main.thread

    def take_account(self) -> int:
        """Return a fresh account number (its mailbox is empty and used by no other test)."""
        i = self.next_account
        if i >= ACCOUNTS:
            raise RuntimeError("out of test accounts: raise ACCOUNTS in imap_world.py")
        self.next_account += 1
        return i

    def stop(self) -> None:
        """Stop every relay (sessions get 2 s)."""
        for relay in self.apps.values():
            relay.stop(2.0)


def build_config(base: Path, oauth: SandboxOAuthProvider, dovecot: DovecotServer,
                 upstream_tls: str = "implicit", limits: LimitsConfig | None = None) -> RelayConfig:
    """Accounts imapuser0..N on Dovecot (TLS on connect by default), IMAP listener on loopback."""
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=DEFAULT_CLIENT_ID,
                              scopes=("mail", "offline_access"), authorize_url=oauth.authorize_url,
                              token_url=oauth.token_url)
    port = dovecot.imaps_port if upstream_tls == "implicit" else dovecot.imap_port
    endpoint = UpstreamEndpoint("127.0.0.1", port, upstream_tls,  # type: ignore[arg-type]
                                ca_file=dovecot.cert_file)
    accounts = [AccountConfig(name=f"a{i}", username=user(i), password_hash=password_hash(),
                              mailbox=mailbox(i), credentials="sandbox", smtp=None, pop3=None,
                              imap=endpoint) for i in range(ACCOUNTS)]
    off = ListenerConfig(enabled=False, host="127.0.0.1", port=0)
    return relay_config(accounts=accounts, credentials=creds,
                        token_store=TokenStoreConfig(path=base / "tokens.enc", key_env=None),
                        limits=limits or LimitsConfig(auth_failure_delay_s=0.0,
                                                      upstream_connect_timeout_s=5.0),
                        smtp_listener=off, pop3_listener=off)


def with_imap_listener(config: RelayConfig, tls: str, cert: Path, key: Path, base: Path,
                       host: str = "127.0.0.1") -> RelayConfig:
    """``config`` with one IMAP listener (``tls``: none, starttls, implicit) and its store in ``base``."""
    imap = ListenerConfig(enabled=True, host=host, port=0, tls=tls,  # type: ignore[arg-type]
                          cert_file=None if tls == "none" else cert,
                          key_file=None if tls == "none" else key)
    return replace(config, listen=ListenConfig(smtp=config.listen.smtp, pop3=config.listen.pop3, imap=imap),
                   token_store=replace(config.token_store, path=base / "tokens.enc"))


def start_relay(base: Path, oauth: SandboxOAuthProvider, dovecot: DovecotServer,
                listen_host: str = "127.0.0.1", listeners: tuple[str, ...] = LISTENER_TLS,
                **kwargs: Any) -> ImapRelay:
    """A RelayApp per IMAP listener variant in ``listeners`` (plain, STARTTLS, implicit TLS), each
    from its relay.yaml over a token store seeded with one token per account, as after
    `relay authorize`."""
    apps: dict[str, AppRelay] = {}
    try:
        for tls in listeners:
            directory = base / tls
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            config = with_imap_listener(build_config(directory, oauth, dovecot, **kwargs), tls,
                                        dovecot.cert_file, dovecot.key_file, directory, listen_host)
            key = generate_key()
            seed_accounts(config, key, {f"a{i}": authorized_token_set(
                oauth, f"a{i}", mailbox(i), expires_in_s=3600, obtained_ago_s=0,
                access_lifetime_s=3600) for i in range(ACCOUNTS)})
            apps[tls] = start_app_relay(config, directory, key=key, name=f"imap-relay-{tls}")
    except BaseException:
        for relay in apps.values():
            relay.stop()
        raise
    return ImapRelay(apps)


def start_world() -> tuple[Path, SandboxOAuthProvider, DovecotServer]:
    """Root check, base dir, certificate, OAuth provider and Dovecot IMAP."""
    require_root()
    base = make_base_dir("relay-imap-")
    oauth = SandboxOAuthProvider().start()
    cert, key = make_cert_dir(base)
    (base / "dovecot").mkdir(mode=0o755)
    dovecot = DovecotServer(base / "dovecot", oauth.introspection_url, cert, key, protocols=("imap",))
    try:
        dovecot.start()
    except BaseException:
        oauth.stop()
        raise
    return base, oauth, dovecot


def trusting_context(cert_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts exactly the test certificate."""
    return ssl.create_default_context(cafile=str(cert_file))


def imap_login(port: int, i: int, *, tls: str = "none", cert: Path | None = None) -> imaplib.IMAP4:
    """An imaplib client logged in through the relay as account ``i``."""
    client: imaplib.IMAP4
    if tls == "implicit":
        assert cert is not None
        client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=trusting_context(cert),
                                   timeout=TIMEOUT_S)
    else:
        client = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT_S)
        if tls == "starttls":
            assert cert is not None
            client.starttls(ssl_context=trusting_context(cert))
    client.login(user(i), PASSWORD)
    return client

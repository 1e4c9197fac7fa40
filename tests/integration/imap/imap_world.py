"""A private Dovecot IMAP (oauth2 passdb, LMTP for delivery) and the relay's IMAP listeners.

Dovecot checks XOAUTH2 tokens at the sandbox OAuth provider (PROTOCOLS.md section 8, the recipe
the POP3 real-server tests use). The relay runs on its own loop thread with several accounts, one
per test, so one Dovecot and one relay serve a whole test module.
"""

from __future__ import annotations

import base64
import functools
import imaplib
import os
import smtplib
import ssl
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "real"))

from real_servers import (
    ensure_system_user,
    free_port,
    make_base_dir,
    make_cert_dir,
    require_program,
    require_root,
    wait_for_exit,
    wait_for_port,
)
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
from relay.tokens.store import EncryptedFileStore, generate_key

PASSWORD = "imap horse battery"
TIMEOUT_S = 30.0
ACCOUNTS = 16
MAIL_DOMAIN = "example.com"

DOVECOT_IMAP_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
auth_verbose = yes
protocols = imap lmtp
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = xoauth2 oauthbearer
auth_cache_size = 0
auth_failure_delay = 0
mail_location = maildir:{base}/mail/%u
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
last_valid_uid = {uid}
lmtp_save_to_detail_mailbox = no
recipient_delimiter =
# New mail shows up in IDLE at once (inotify), with a keep-alive every 30 s.
imap_idle_notify_interval = 30 secs
# COMPRESS=DEFLATE (RFC 4978), to show it works end to end through the relay's splice.
protocol imap {{
  mail_plugins = $mail_plugins imap_zlib
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%u allow_all_users=yes
}}
"""

OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = email
active_attribute = active
active_value = true
"""


@dataclass
class DovecotImap:
    """A private Dovecot 2.3 serving IMAP (STARTTLS and TLS on connect) and LMTP on loopback."""

    base: Path
    introspection_url: str
    cert_file: Path
    key_file: Path
    imap_port: int = 0
    imaps_port: int = 0
    lmtp_port: int = 0

    def start(self) -> None:
        """Write the configuration, start the daemon, wait for its ports."""
        user = ensure_system_user("vmail")
        self.imap_port, self.imaps_port, self.lmtp_port = free_port(), free_port(), free_port()
        (self.base / "mail").mkdir(parents=True, exist_ok=True)
        os.chown(self.base / "mail", user.pw_uid, user.pw_gid)
        (self.base / "oauth2.conf.ext").write_text(OAUTH2_CONF.format(url=self.introspection_url))
        conf = self.base / "dovecot.conf"
        conf.write_text(DOVECOT_IMAP_CONF.format(
            base=self.base, cert=self.cert_file, key=self.key_file, uid=user.pw_uid,
            gid=user.pw_gid, imap_port=self.imap_port, imaps_port=self.imaps_port,
            lmtp_port=self.lmtp_port))
        out_file = self.base / "dovecot.stderr"
        with out_file.open("wb") as out:
            code = subprocess.call([require_program("dovecot", "dovecot-core dovecot-imapd"),
                                    "-c", str(conf)], stdout=out, stderr=out, timeout=30)
        if code != 0:
            raise RuntimeError(f"dovecot failed ({code}): {out_file.read_text(errors='replace')} "
                               f"{self.log_text()[-2000:]}")
        for port in (self.imap_port, self.imaps_port, self.lmtp_port):
            wait_for_port(port, what="dovecot")

    def stop(self) -> None:
        """SIGTERM the master and wait until it is gone."""
        try:
            pid = int((self.base / "run" / "master.pid").read_text().strip())
            os.kill(pid, 15)
        except (OSError, ValueError):
            return
        wait_for_exit(pid, "dovecot")

    def log_text(self) -> str:
        """Dovecot's log so far."""
        try:
            return (self.base / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def deliver(self, mailbox: str, message: bytes) -> None:
        """Deliver ``message`` into ``mailbox`` through Dovecot's LMTP."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=TIMEOUT_S) as lmtp:
            lmtp.sendmail("sender@example.org", [mailbox], message)


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
    """The relay's IMAP listeners (plain, STARTTLS, implicit TLS) on one loop thread."""

    config: RelayConfig
    loop: LoopThread
    tokens: Any
    servers: dict[str, Any]
    next_account: int = 0
    ports: dict[str, int] = field(default_factory=dict)

    def take_account(self) -> int:
        """Return a fresh account number (its mailbox is empty and used by no other test)."""
        i = self.next_account
        if i >= ACCOUNTS:
            raise RuntimeError("out of test accounts: raise ACCOUNTS in imap_world.py")
        self.next_account += 1
        return i

    def stop(self) -> None:
        """Stop the listeners and the token manager, then the loop thread."""
        async def _stop() -> None:
            for server in self.servers.values():
                await server.stop(2.0)
            await self.tokens.close()

        try:
            self.loop.run(_stop(), timeout_s=30)
        finally:
            self.loop.stop()


def build_config(base: Path, oauth: SandboxOAuthProvider, dovecot: DovecotImap,
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
    config = relay_config(accounts=accounts, credentials=creds,
                          token_store=TokenStoreConfig(path=base / "tokens.enc", key_env=None),
                          limits=limits or LimitsConfig(auth_failure_delay_s=0.0,
                                                        upstream_connect_timeout_s=5.0),
                          smtp_listener=off, pop3_listener=off)
    return config


def listener_variants(config: RelayConfig, cert: Path, key: Path,
                      host: str = "127.0.0.1") -> dict[str, RelayConfig]:
    """The same relay with a plain, a STARTTLS and an implicit-TLS IMAP listener on ``host``."""
    def with_imap(tls: str) -> RelayConfig:
        imap = ListenerConfig(enabled=True, host=host, port=0, tls=tls,  # type: ignore[arg-type]
                              cert_file=None if tls == "none" else cert,
                              key_file=None if tls == "none" else key)
        return replace(config, listen=ListenConfig(smtp=config.listen.smtp, pop3=config.listen.pop3,
                                                   imap=imap))
    return {tls: with_imap(tls) for tls in ("none", "starttls", "implicit")}


def start_relay(base: Path, oauth: SandboxOAuthProvider, dovecot: DovecotImap,
                listen_host: str = "127.0.0.1", **kwargs: Any) -> ImapRelay:
    """Seed one token per account and start the three IMAP listeners on a loop thread."""
    from relay.imap.server import ImapProxyServer
    from relay.localauth import LocalAuthenticator
    from relay.tokens.manager import TokenManager

    base.mkdir(parents=True, exist_ok=True)
    config = build_config(base, oauth, dovecot, **kwargs)
    variants = listener_variants(config, dovecot.cert_file, dovecot.key_file, listen_host)
    store = EncryptedFileStore(base / "tokens.enc", base64.urlsafe_b64decode(generate_key())).open()
    loop = LoopThread("imap-relay-under-test").start()

    async def _start() -> tuple[Any, dict[str, Any]]:
        for i in range(ACCOUNTS):
            await store.put(authorized_token_set(oauth, f"a{i}", mailbox(i), expires_in_s=3600,
                                                 obtained_ago_s=0, access_lifetime_s=3600))
        tokens = TokenManager(config, store)
        await tokens.start()
        authenticator = LocalAuthenticator(config)
        servers = {tls: ImapProxyServer(cfg, tokens, authenticator) for tls, cfg in variants.items()}
        for server in servers.values():
            await server.start()
        return tokens, servers

    try:
        tokens, servers = loop.run(_start(), timeout_s=30)
    except BaseException:
        loop.stop()
        raise
    relay = ImapRelay(config=config, loop=loop, tokens=tokens, servers=servers)
    relay.ports = {tls: server.port for tls, server in servers.items()}
    return relay


def start_world() -> tuple[Path, SandboxOAuthProvider, DovecotImap]:
    """Root check, base dir, certificate, OAuth provider and Dovecot IMAP."""
    require_root()
    require_program("dovecot", "dovecot-core dovecot-imapd dovecot-lmtpd")
    base = make_base_dir("relay-imap-")
    oauth = SandboxOAuthProvider().start()
    cert, key = make_cert_dir(base)
    (base / "dovecot").mkdir(mode=0o755)
    dovecot = DovecotImap(base / "dovecot", oauth.introspection_url, cert, key)
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

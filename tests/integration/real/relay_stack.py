"""The relay (SMTP + POP3 listeners, token manager) wired to the real Postfix/Dovecot for one account.

The relay runs on its own event loop thread, so tests can drive it with blocking real clients
(swaks, fetchmail, msmtp, smtplib) from the test thread.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.relay_harness import authorized_token_set, relay_config

from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    LimitsConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.localauth import LocalAuthenticator
from relay.passwords import hash_password
from relay.sandbox.loop import LoopThread
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, SandboxOAuthProvider
from relay.tokens.store import EncryptedFileStore, generate_key

LOCAL_USER = "legacy-app"
LOCAL_PASSWORD = "correct horse battery staple"
ACCOUNT = "real"


def _password_hash(password: str) -> str:
    return hash_password(password, log2_n=10)


def _authenticator(config: RelayConfig) -> LocalAuthenticator:
    return LocalAuthenticator(config)


@dataclass
class RelayStack:
    """A running relay for one account whose mailbox lives on the real servers."""

    mailbox: str
    config: RelayConfig
    smtp_port: int
    pop3_port: int
    loop: LoopThread
    tokens: Any
    _servers: tuple[Any, Any]

    def stop(self) -> None:
        """Stop both listeners and the token manager, then the loop thread."""
        async def _stop() -> None:
            for server in self._servers:
                await server.stop(2.0)
            await self.tokens.close()

        try:
            self.loop.run(_stop(), timeout_s=30)
        finally:
            self.loop.stop()


def start_relay(*, oauth: SandboxOAuthProvider, base: Path, mailbox: str, cert_file: Path,
                key_file: Path, postfix_port: int, dovecot_pop3s_port: int,
                access_lifetime_s: float | None = None, token_mailbox: str | None = None,
                smtp_pipelining: bool = True) -> RelayStack:
    """Build the config, seed the token store with a grant for ``token_mailbox`` (default the
    account's mailbox) and start the relay's SMTP (STARTTLS offered) and POP3 listeners.
    ``smtp_pipelining`` is the account's ``smtp.pipelining`` setting."""
    from relay.pop3.server import Pop3ProxyServer
    from relay.smtp.server import SmtpRelayServer
    from relay.tokens.manager import TokenManager

    base.mkdir(parents=True, exist_ok=True)
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=DEFAULT_CLIENT_ID,
                              scopes=("mail", "offline_access"), authorize_url=oauth.authorize_url,
                              token_url=oauth.token_url, revocation_url=oauth.revocation_url)
    account = AccountConfig(
        name=ACCOUNT, username=LOCAL_USER, password_hash=_password_hash(LOCAL_PASSWORD), mailbox=mailbox,
        credentials="sandbox",
        smtp=UpstreamEndpoint(host="127.0.0.1", port=postfix_port, tls="starttls", ca_file=cert_file,
                              pipelining=smtp_pipelining),
        pop3=UpstreamEndpoint(host="127.0.0.1", port=dovecot_pop3s_port, tls="implicit",
                              ca_file=cert_file))
    config = relay_config(
        accounts=[account], credentials=creds,
        token_store=TokenStoreConfig(path=base / "tokens.enc", key_env=None),
        smtp_listener=ListenerConfig(enabled=True, host="127.0.0.1", port=0, tls="starttls",
                                     cert_file=cert_file, key_file=key_file),
        pop3_listener=ListenerConfig(enabled=True, host="127.0.0.1", port=0, tls="none"),
        limits=LimitsConfig(auth_failure_delay_s=0.0, token_refresh_margin_s=1.0,
                            upstream_connect_timeout_s=5.0))
    store = EncryptedFileStore(base / "tokens.enc", base64.urlsafe_b64decode(generate_key())).open()
    grant_for = token_mailbox or mailbox
    lifetime = access_lifetime_s or 3600.0
    seed = authorized_token_set(oauth, ACCOUNT, grant_for, expires_in_s=lifetime, obtained_ago_s=0,
                                access_lifetime_s=lifetime)
    loop = LoopThread("relay-under-test").start()

    async def _start() -> tuple[Any, Any, Any]:
        await store.put(seed)
        tokens = TokenManager(config, store)
        await tokens.start()
        authenticator = _authenticator(config)
        smtp = SmtpRelayServer(config, tokens, authenticator, hostname="relay.test")
        pop3 = Pop3ProxyServer(config, tokens, authenticator)
        await smtp.start()
        await pop3.start()
        return tokens, smtp, pop3

    try:
        tokens, smtp, pop3 = loop.run(_start(), timeout_s=30)
    except BaseException:
        loop.stop()
        raise
    return RelayStack(mailbox=mailbox, config=config, smtp_port=smtp.port, pop3_port=pop3.port,
                      loop=loop, tokens=tokens, _servers=(smtp, pop3))

"""The relay (a RelayApp from relay.yaml) wired to the real Postfix/Dovecot for one account.

The relay runs on its own event loop thread (tests/support/app_harness.py), so tests can drive it
with blocking real clients (swaks, fetchmail, msmtp, smtplib) from the test thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support.app_harness import AppRelay, seed_accounts, start_app_relay
from support.relay_harness import authorized_token_set, relay_config

from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    LimitsConfig,
    ListenerConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.passwords import hash_password
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, SandboxOAuthProvider
from relay.tokens.store import generate_key

LOCAL_USER = "legacy-app"
LOCAL_PASSWORD = "correct horse battery staple"
ACCOUNT = "real"


@dataclass
class RelayStack(AppRelay):
    """A running relay for one account whose mailbox lives on the real servers."""

    mailbox: str = ""


def start_relay(*, oauth: SandboxOAuthProvider, base: Path, mailbox: str, cert_file: Path,
                key_file: Path, postfix_port: int, dovecot_pop3s_port: int,
                access_lifetime_s: float | None = None, token_mailbox: str | None = None,
                smtp_pipelining: bool = True) -> RelayStack:
    """Write relay.yaml (SMTP listener offering STARTTLS, plain POP3 listener, one account on
    Postfix/Dovecot), seed the token store with a grant for ``token_mailbox`` (default the
    account's mailbox) and start a RelayApp from it. ``smtp_pipelining`` is the account's
    ``smtp.pipelining`` setting."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=DEFAULT_CLIENT_ID,
                              scopes=("mail", "offline_access"), authorize_url=oauth.authorize_url,
                              token_url=oauth.token_url, revocation_url=oauth.revocation_url)
    account = AccountConfig(
        name=ACCOUNT, username=LOCAL_USER, password_hash=hash_password(LOCAL_PASSWORD, log2_n=10),
        mailbox=mailbox, credentials="sandbox",
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
    lifetime = access_lifetime_s or 3600.0
    key = generate_key()
    seed_accounts(config, key, {ACCOUNT: authorized_token_set(
        oauth, ACCOUNT, token_mailbox or mailbox, expires_in_s=lifetime, obtained_ago_s=0,
        access_lifetime_s=lifetime)})
    relay = start_app_relay(config, base, key=key, name="real-relay")
    return RelayStack(relay.app, relay.thread, relay.config_path, mailbox=mailbox)

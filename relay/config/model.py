"""The typed, frozen configuration model, and the YAML keys it accepts.

A field declared with ``key(parser, default)`` is a YAML key of its section; other fields are not
(``name`` comes from the mapping key, ``smtp``/``pop3`` of an account are resolved from the
provider by `relay.configuration`). Everything here is plain data: no I/O, no defaults that
depend on the environment. Times are in seconds (``*_s``), sizes in bytes (``*_bytes``).
To add a setting, see "Adding a setting" in docs/architecture.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from relay.config.parsers import (
    ENV_NAME,
    MAILBOX,
    EndpointOverride,
    boolean,
    choice,
    endpoint,
    file_path,
    named,
    networks,
    optional_section,
    optional_text,
    port,
    seconds,
    secret_text,
    section,
    string_map,
    text,
    text_list,
    url,
    whole,
    words,
)
from relay.config.schema import Parser, key

# The operations sections live in relay.config.sections; re-exported here (X as X: explicit for mypy).
from relay.config.sections import DAY_S as DAY_S  # noqa: PLC0414
from relay.config.sections import AdminConfig as AdminConfig  # noqa: PLC0414
from relay.config.sections import AlertsConfig as AlertsConfig  # noqa: PLC0414
from relay.config.sections import EmailAlertConfig as EmailAlertConfig  # noqa: PLC0414
from relay.config.sections import PoolConfig as PoolConfig  # noqa: PLC0414
from relay.config.sections import SpoolConfig as SpoolConfig  # noqa: PLC0414
from relay.config.sections import WebhookAlertConfig as WebhookAlertConfig  # noqa: PLC0414
from relay.config.sections import WebhookFormat as WebhookFormat  # noqa: PLC0414
from relay.secret import Secret

TlsMode = Literal["none", "starttls", "implicit"]
"""How TLS is used on a connection: not at all, upgraded with STARTTLS/STLS, or from the start."""

OAuthFlow = Literal["authorization_code", "device_code", "client_credentials", "service_account"]
"""How tokens are obtained: interactive (code/device) once, or on demand (app-only)."""

EnvelopeSenderPolicy = Literal["keep", "rewrite"]
"""`keep` forwards the client's MAIL FROM; `rewrite` replaces it with the account's mailbox."""

SendVia = Literal["smtp", "graph"]
"""How an account sends: SMTP with XOAUTH2, or Microsoft Graph `sendMail`."""

ReadVia = Literal["pop3", "graph"]
"""How an account is read by POP3 clients: upstream POP3 with XOAUTH2, or the Graph mailbox."""

GraphDeleteMode = Literal["move", "delete"]
"""What POP3 DELE does at QUIT on a Graph mailbox: move to Deleted Items, or DELETE the item."""

GraphLargeMessages = Literal["refuse", "upload_session"]
"""A message over Graph's request limit: refused (552), or sent as draft + upload session."""

DeliveryMode = Literal["forward", "spool"]
"""`forward` relays live (250 once the upstream accepted); `spool` stores durably, then delivers."""

MicrosoftCloud = Literal["global", "usgovernment", "china"]
"""Which Microsoft cloud a tenant lives in: worldwide (and GCC), US Government (GCC High), China."""

AssertionAlgorithm = Literal["PS256", "RS256"]
"""How a client assertion is signed: PS256 + x5t#S256 (current docs) or RS256 + x5t (older docs)."""

BareLfMode = Literal["normalize", "reject"]
"""A client line ending in a bare LF: read as a line end (sent on as CRLF), or refused with 5xx."""

TlsVersion = Literal["1.0", "1.1", "1.2", "1.3"]
"""A TLS protocol version, as written in the config."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ListenerConfig:
    """One local listener (SMTP or POP3) that legacy apps connect to."""

    enabled: bool = key(boolean())
    host: str = key(optional_text())  # empty: the default host
    port: int = key(port(allow_zero=True))
    tls: TlsMode = key(choice(TlsMode), "none")
    cert_file: Path | None = key(file_path(), None)
    key_file: Path | None = key(file_path(), None)
    # Networks (besides loopback) where AUTH without TLS is allowed, e.g. a trusted container
    # network. Empty by default: off loopback, plaintext logins need TLS.
    allow_plaintext_auth_from: tuple[IPNetwork, ...] = key(networks(), ())
    # A command or DATA line ending in a bare LF (no CR): "normalize" reads it as a line end and
    # sends it on as CRLF; "reject" answers 5xx and closes (Postfix's smtpd_forbid_bare_newline).
    bare_lf: BareLfMode = key(choice(BareLfMode), "normalize")
    # The oldest TLS version local clients may use; "1.0"/"1.1" only for devices that cannot do
    # better (weak ciphers come back with it; logged loudly). The upstream side is always 1.2+.
    # (YAML reads `1.0` as a number: it is taken as the text "1.0".)
    min_tls_version: TlsVersion = key(choice(TlsVersion, decimals=1), "1.2")


def _listener(host: str, listen_port: int) -> Parser:
    return section(ListenerConfig, defaults={"enabled": True, "host": host, "port": listen_port},
                   switch="enabled")


@dataclass(frozen=True)
class ListenConfig:
    """The local listeners (SMTP, POP3, IMAP)."""

    smtp: ListenerConfig = key(_listener("127.0.0.1", 2525))
    pop3: ListenerConfig = key(_listener("127.0.0.1", 1110))
    # Off unless configured: IMAP came later, and an upgrade must not open a new port on its own.
    # An `imap:` key (even empty or `true`) turns it on.
    imap: ListenerConfig = key(_listener("127.0.0.1", 1143),
                               ListenerConfig(enabled=False, host="127.0.0.1", port=1143), null_is_value=True)


@dataclass(frozen=True)
class TokenStoreConfig:
    """Where tokens live and where the store's encryption key comes from.

    The key is read from the environment variable ``key_env`` if it is set there, else from
    ``key_file``. ``relay init-key`` creates one.
    """

    path: Path = key(file_path("relay-tokens.enc"), placeholder=Path("relay-tokens.enc"))
    key_env: str | None = key(optional_text(pattern=ENV_NAME, what="a valid environment variable name"),
                              "RELAY_STORE_KEY", null_is_value=True)
    key_file: Path | None = key(file_path(), None)
    # ``backend: redis`` keeps the (still encrypted) tokens in Redis/Valkey at ``url`` under
    # ``key_prefix``, shared by several relay replicas.
    backend: Literal["file", "redis"] = key(choice(Literal["file", "redis"]), "file")
    url: str | None = key(optional_text(), None)  # redis://, rediss://, unix:// (valkey:// too)
    key_prefix: str = key(text(empty="xoauth2-relay:"), "xoauth2-relay:")
    password: Secret | None = key(secret_text(), None)
    lease_ttl_s: float = key(seconds(3600.0), 30.0)


@dataclass(frozen=True)
class UpstreamEndpoint:
    """An upstream mail server the relay connects to on an account's behalf."""

    host: str = key(text(), required=True)
    port: int = key(port(allow_zero=False), required=True, placeholder=0)
    tls: TlsMode = key(choice(TlsMode))
    # Extra CA bundle for private servers (and the sandbox); system CAs are used otherwise.
    ca_file: Path | None = key(file_path(), None)
    # Turning this off is only for tests and is logged loudly at start.
    verify_tls: bool = key(boolean(), True)
    # SMTP only: pipeline commands (RFC 2920) and send content as BDAT chunks (RFC 3030) when the
    # upstream offers PIPELINING / CHUNKING. Off: one command per round trip, content with DATA.
    pipelining: bool = key(boolean(), True, only_under="smtp")


@dataclass(frozen=True)
class ClientCertificateConfig:
    """A certificate credential (Microsoft ``private_key_jwt``): the relay signs client assertions
    with ``key_file``; ``cert_file`` is the public certificate registered on the app."""

    cert_file: Path = key(file_path(), required=True, placeholder=None)
    key_file: Path = key(file_path(), required=True, placeholder=None)
    key_passphrase: Secret | None = key(secret_text(), None)
    algorithm: AssertionAlgorithm = key(choice(AssertionAlgorithm), "PS256")


@dataclass(frozen=True)
class ProxyConfig:
    """An HTTP(S) proxy for the token, device and revocation requests of one credentials entry.
    In the YAML, a plain string is the ``url``."""

    url: str = key(url(), required=True)  # http://host:port (no credentials in it; use username/password)
    username: str | None = key(optional_text(), None)
    password: Secret | None = key(secret_text(), None)


@dataclass(frozen=True)
class CredentialsConfig:
    """Named OAuth client credentials (an app registration), like the reference doc's
    "Email OAuth credentials"; several accounts may share one."""

    name: str
    # "microsoft" | "google" | "generic" | "package.module:ClassName"
    provider: str = key(text(), required=True)
    client_id: str = key(text(), required=True)
    flow: OAuthFlow = key(choice(OAuthFlow), "authorization_code")
    client_secret: Secret | None = key(secret_text(), None)
    tenant_id: str | None = key(optional_text(), None)
    scopes: tuple[str, ...] | None = key(words(), None)  # None: the provider's defaults for SMTP + POP3
    graph_scopes: tuple[str, ...] | None = key(words(), None)  # None: the provider's Graph scopes
    # Port of the loopback redirect listener for `relay authorize` (0: any free port).
    redirect_port: int = key(port(allow_zero=True), 0)
    # None: 127.0.0.1 (RFC 8252 8.3), or localhost for Microsoft (see relay.authorize).
    redirect_host: str | None = key(optional_text(), None)
    # Endpoint overrides (required for `generic`, optional elsewhere).
    authorize_url: str | None = key(url(), None)
    token_url: str | None = key(url(), None)
    device_authorization_url: str | None = key(url(), None)
    revocation_url: str | None = key(url(), None)
    # Google service account JSON key file (flow `service_account`).
    service_account_file: Path | None = key(file_path(), None)
    # Free-form provider-specific options for custom providers.
    options: Mapping[str, str] = key(string_map(), default_factory=dict)
    # Microsoft: sign client assertions with a certificate instead of sending client_secret.
    client_certificate: ClientCertificateConfig | None = key(optional_section(ClientCertificateConfig), None)
    # Microsoft: the national cloud the tenant lives in (login, token and mail hosts).
    cloud: MicrosoftCloud = key(choice(MicrosoftCloud), "global")
    # Proxy for OAuth HTTP requests; None: HTTPS_PROXY / NO_PROXY from the environment apply.
    proxy: ProxyConfig | None = key(optional_section(ProxyConfig, shorthand="url"), None)


@dataclass(frozen=True)
class GraphConfig:
    """Microsoft Graph settings of an account (used with ``send_via``/``read_via: graph``)."""

    # Graph's v1.0 root; "" (not written): the credentials' Microsoft cloud's, resolved at load.
    url: str = key(url(), "")
    # Graph's request limit (base64 MIME counts): PROTOCOLS.md 9.1.
    max_request_bytes: int = key(whole(64 * 1024, 150 * 1024 * 1024), 4_000_000)
    large_messages: GraphLargeMessages = key(choice(GraphLargeMessages), "refuse")
    max_messages: int = key(whole(1, 1_000_000), 1000)  # POP3 snapshot cap (oldest first)
    page_size: int = key(whole(1, 1000), 100)  # $top of each list request
    delete: GraphDeleteMode = key(choice(GraphDeleteMode), "move")  # DELE at QUIT
    timeout_s: float = key(seconds(DAY_S), 120.0)
    ca_file: Path | None = key(file_path(), None)  # a private CA (tests, proxies); None: the system's
    verify_tls: bool = key(boolean(), True)


@dataclass(frozen=True)
class AccountConfig:
    """A local login that maps to one upstream mailbox."""

    name: str
    username: str = key(text(), required=True)  # the login the legacy app uses
    # From `relay hash-password`; None only with allow_without_auth_from.
    password_hash: str | None = key(optional_text(secret=True), placeholder=None)
    mailbox: str = key(text(pattern=MAILBOX, what="an email address"), required=True)  # XOAUTH2 `user=`
    credentials: str = key(text(), required=True)  # name of a CredentialsConfig
    # The upstream servers, resolved at load from the written settings below and the provider's
    # defaults. None: this account does not send (smtp) / read mail (pop3).
    smtp: UpstreamEndpoint | None = None
    pop3: UpstreamEndpoint | None = None
    imap: UpstreamEndpoint | None = None  # None: no IMAP access for this account
    smtp_written: EndpointOverride = key(endpoint(UpstreamEndpoint, "smtp"), EndpointOverride(),
                                         name="smtp", repr=False)
    pop3_written: EndpointOverride = key(endpoint(UpstreamEndpoint, "pop3"), EndpointOverride(),
                                         name="pop3", repr=False)
    imap_written: EndpointOverride = key(endpoint(UpstreamEndpoint, "imap"), EndpointOverride(),
                                         name="imap", repr=False)
    allow_without_auth_from: tuple[IPNetwork, ...] = key(networks(), ())
    envelope_sender: EnvelopeSenderPolicy = key(choice(EnvelopeSenderPolicy), "keep")
    # MAIL FROM addresses this account may use: addresses and ``*@domain``; empty: any.
    allowed_senders: tuple[str, ...] = key(text_list("a list of addresses and '*@domain' patterns"), ())
    # Concurrent upstream SMTP sessions for this mailbox; None: the provider's default (Microsoft
    # 3, resolved at load), 0: no cap.
    max_upstream_sessions: int | None = key(whole(0, 10_000, allow_zero=True), None)
    # Concurrent upstream POP3 sessions for this mailbox; None: the provider's default, 0: no cap.
    max_upstream_pop3_sessions: int | None = key(whole(0, 10_000, allow_zero=True), None)
    send_via: SendVia = key(choice(SendVia), "smtp")
    read_via: ReadVia = key(choice(ReadVia), "pop3")
    # Set (defaults filled, url resolved) at load when send_via or read_via is graph.
    graph: GraphConfig | None = key(optional_section(GraphConfig), None)

    @property
    def can_send(self) -> bool:
        """True when the account has an upstream to send through (SMTP server or Graph)."""
        return self.send_via == "graph" or self.smtp is not None

    @property
    def can_read(self) -> bool:
        """True when POP3 clients can read the account (upstream POP3 server or Graph)."""
        return self.read_via == "graph" or self.pop3 is not None

    delivery: DeliveryMode = key(choice(DeliveryMode), "forward")  # README "Forward or spool"


@dataclass(frozen=True)
class LimitsConfig:
    """Limits and timeouts, with defaults that suit a local relay. Every limit has a range."""

    max_message_bytes: int = key(whole(0, 2**31 - 1), 35 * 1024 * 1024)
    max_connections: int = key(whole(0, 1_000_000), 1000)  # per listener
    # Per client address (IPv6: per /64) and listener; loopback clients are exempt (see
    # relay.sessionlimits).
    max_connections_per_client: int = key(whole(0, 1_000_000), 100)
    # A connection must log in (or, for trusted SMTP clients, send MAIL) within this time.
    login_timeout_s: float = key(seconds(DAY_S), 120.0)
    # NOOP/RSET/HELP/refused commands allowed in a row without progress before the session closes.
    max_commands_without_progress: int = key(whole(0, 1_000_000), 50)
    # After the upstream refuses a freshly refreshed token: no token requests for this long
    # (doubling while it keeps happening, up to 15 min); sessions get a temporary error meanwhile.
    upstream_auth_cooldown_s: float = key(seconds(DAY_S), 60.0)
    smtp_command_timeout_s: float = key(seconds(DAY_S), 300.0)  # RFC 5321 4.5.3.2: 5 minutes
    pop3_idle_timeout_s: float = key(seconds(DAY_S), 600.0)  # RFC 1939: at least 10 minutes
    imap_idle_timeout_s: float = key(seconds(DAY_S), 1800.0)  # RFC 9051 5.4 / RFC 2177: 30 minutes
    upstream_connect_timeout_s: float = key(seconds(3600.0), 30.0)
    upstream_command_timeout_s: float = key(seconds(DAY_S), 120.0)
    upstream_data_timeout_s: float = key(seconds(DAY_S), 600.0)
    auth_failure_delay_s: float = key(seconds(60.0, allow_zero=True), 1.0)
    auth_failures_before_throttle: int = key(whole(0, 1_000_000), 5)
    auth_throttle_window_s: float = key(seconds(DAY_S), 300.0)
    # Renew this long before expiry: Exchange Online's High Volume Email refuses tokens that expire
    # within ~10 minutes (PROTOCOLS.md 9.3), so 15 minutes.
    token_refresh_margin_s: float = key(seconds(DAY_S), 900.0)
    # Refresh every grant at least this often even when idle: Microsoft refresh tokens die after
    # 90 days unused.
    token_keepalive_days: float = key(seconds(365.0), 7.0)
    # How long a session waits for a free upstream slot (accounts.NAME.max_upstream_sessions).
    upstream_slot_wait_s: float = key(seconds(3600.0), 60.0)
    shutdown_grace_s: float = key(seconds(DAY_S), 30.0)


@dataclass(frozen=True)
class RelayConfig:
    """The whole configuration, as loaded from one YAML file."""

    listen: ListenConfig = key(section(ListenConfig))
    token_store: TokenStoreConfig = key(section(TokenStoreConfig))
    credentials: Mapping[str, CredentialsConfig] = key(named(CredentialsConfig, what="names to credentials"),
                                                       placeholder={})
    accounts: Mapping[str, AccountConfig] = key(
        named(AccountConfig, what="account names to accounts", nonempty=True), required=True, placeholder={})
    limits: LimitsConfig = key(section(LimitsConfig), default_factory=LimitsConfig)
    upstream_pool: PoolConfig = key(section(PoolConfig), default_factory=PoolConfig)
    # None: no admin listener / problems are only logged.
    admin: AdminConfig | None = key(optional_section(AdminConfig, switch=True), None)
    alerts: AlertsConfig | None = key(optional_section(AlertsConfig, switch=True), None)
    spool: SpoolConfig = key(section(SpoolConfig), default_factory=SpoolConfig)
    source_path: Path | None = None  # the YAML file it came from, for messages

    def account_by_username(self, username: str) -> AccountConfig | None:
        """Return the account whose local login is ``username`` (case-sensitive), if any."""
        for account in self.accounts.values():
            if account.username == username:
                return account
        return None

    def spool_directory(self) -> Path:
        """Where the spool lives: ``spool.directory``, else ``spool`` beside the token store."""
        return self.spool.directory or self.token_store.path.parent / "spool"

    def credentials_for(self, account: AccountConfig) -> CredentialsConfig:
        """Return the credentials an account uses (validated to exist at load)."""
        return self.credentials[account.credentials]

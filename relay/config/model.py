"""The typed, frozen configuration model, built once at load by `relay.config.loader`.

Everything here is plain data: no I/O, no defaults that depend on the environment. Times are in
seconds (``*_s``), sizes in bytes (``*_bytes``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.secret import Secret

TlsMode = Literal["none", "starttls", "implicit"]
"""How TLS is used on a connection: not at all, upgraded with STARTTLS/STLS, or from the start."""

OAuthFlow = Literal["authorization_code", "device_code", "client_credentials", "service_account"]
"""How tokens are obtained: interactive (code/device) once, or on demand (app-only)."""

EnvelopeSenderPolicy = Literal["keep", "rewrite"]
"""`keep` forwards the client's MAIL FROM; `rewrite` replaces it with the account's mailbox."""

MicrosoftCloud = Literal["global", "usgovernment", "china"]
"""Which Microsoft cloud a tenant lives in: worldwide (and GCC), US Government (GCC High), China."""

AssertionAlgorithm = Literal["PS256", "RS256"]
"""How a client assertion is signed: PS256 + x5t#S256 (current docs) or RS256 + x5t (older docs)."""

BareLfMode = Literal["normalize", "reject"]
"""A client line ending in a bare LF: read as a line end (sent on as CRLF), or refused with 5xx."""

TlsVersion = Literal["1.0", "1.1", "1.2", "1.3"]
"""A TLS protocol version, as written in the config."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SendVia = Literal["smtp", "graph"]
"""How an account sends: SMTP with XOAUTH2, or Microsoft Graph `sendMail`."""

ReadVia = Literal["pop3", "graph"]
"""How an account is read by POP3 clients: upstream POP3 with XOAUTH2, or the Graph mailbox."""

GraphLargeMessages = Literal["refuse", "upload_session"]
"""A message over Graph's request limit: refused (552), or sent as draft + upload session."""

GraphDeleteMode = Literal["move", "delete"]
"""What POP3 DELE does at QUIT on a Graph mailbox: move to Deleted Items, or DELETE the item."""


@dataclass(frozen=True)
class ListenerConfig:
    """One local listener (SMTP or POP3) that legacy apps connect to."""

    enabled: bool
    host: str
    port: int
    tls: TlsMode = "none"
    cert_file: Path | None = None
    key_file: Path | None = None
    # Networks (besides loopback) where AUTH without TLS is allowed, e.g. a trusted container
    # network. Empty by default: off loopback, plaintext logins need TLS.
    allow_plaintext_auth_from: tuple[IPNetwork, ...] = ()
    # A command or DATA line ending in a bare LF (no CR): "normalize" reads it as a line end and
    # sends it on as CRLF; "reject" answers 5xx and closes (Postfix's smtpd_forbid_bare_newline).
    bare_lf: BareLfMode = "normalize"
    # The oldest TLS version local clients may use; "1.0"/"1.1" only for devices that cannot do
    # better (weak ciphers come back with it; logged loudly). The upstream side is always 1.2+.
    min_tls_version: TlsVersion = "1.2"


@dataclass(frozen=True)
class ListenConfig:
    """The local listeners (SMTP, POP3, IMAP)."""

    smtp: ListenerConfig
    pop3: ListenerConfig
    # Off unless configured (in the YAML: an `imap:` key under `listen`).
    imap: ListenerConfig = ListenerConfig(enabled=False, host="127.0.0.1", port=1143)


@dataclass(frozen=True)
class TokenStoreConfig:
    """Where tokens live and where the store's encryption key comes from.

    The key is read from the environment variable ``key_env`` if it is set there, else from
    ``key_file``. ``relay init-key`` creates one. ``backend: redis`` keeps the (still encrypted)
    tokens in Redis/Valkey at ``url`` under ``key_prefix``, shared by several relay replicas.
    """

    path: Path
    key_env: str | None = "RELAY_STORE_KEY"
    key_file: Path | None = None
    backend: Literal["file", "redis"] = "file"
    url: str | None = None
    key_prefix: str = "xoauth2-relay:"
    password: Secret | None = None
    lease_ttl_s: float = 30.0


@dataclass(frozen=True)
class UpstreamEndpoint:
    """An upstream mail server the relay connects to on an account's behalf."""

    host: str
    port: int
    tls: TlsMode
    # Extra CA bundle for private servers (and the sandbox); system CAs are used otherwise.
    ca_file: Path | None = None
    # Turning this off is only for tests and is logged loudly at start.
    verify_tls: bool = True
    # SMTP only: pipeline commands (RFC 2920) and send content as BDAT chunks (RFC 3030) when the
    # upstream offers PIPELINING / CHUNKING. Off: one command per round trip, content with DATA.
    pipelining: bool = True


@dataclass(frozen=True)
class ClientCertificateConfig:
    """A certificate credential (Microsoft ``private_key_jwt``): the relay signs client assertions
    with ``key_file``; ``cert_file`` is the public certificate registered on the app."""

    cert_file: Path
    key_file: Path
    key_passphrase: Secret | None = None
    algorithm: AssertionAlgorithm = "PS256"


@dataclass(frozen=True)
class ProxyConfig:
    """An HTTP(S) proxy for the token, device and revocation requests of one credentials entry."""

    url: str  # http://host:port (no credentials in it; use username/password)
    username: str | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class CredentialsConfig:
    """Named OAuth client credentials (an app registration), like the reference doc's
    "Email OAuth credentials"; several accounts may share one."""

    name: str
    provider: str  # "microsoft" | "google" | "generic" | "package.module:ClassName"
    client_id: str
    flow: OAuthFlow = "authorization_code"
    client_secret: Secret | None = None
    tenant_id: str | None = None
    scopes: tuple[str, ...] | None = None  # None: the provider's defaults for SMTP + POP3
    graph_scopes: tuple[str, ...] | None = None  # None: the provider's Graph scopes (if it has any)
    # Port of the loopback redirect listener for `relay authorize` (0: any free port).
    redirect_port: int = 0
    # None: 127.0.0.1 (RFC 8252 8.3), or localhost for Microsoft (see relay.authorize).
    redirect_host: str | None = None
    # Endpoint overrides (required for `generic`, optional elsewhere).
    authorize_url: str | None = None
    token_url: str | None = None
    device_authorization_url: str | None = None
    revocation_url: str | None = None
    # Google service account JSON key file (flow `service_account`).
    service_account_file: Path | None = None
    # Free-form provider-specific options for custom providers.
    options: Mapping[str, str] = field(default_factory=dict)
    # Microsoft: sign client assertions with a certificate instead of sending client_secret.
    client_certificate: ClientCertificateConfig | None = None
    # Microsoft: the national cloud the tenant lives in (login, token and mail hosts).
    cloud: MicrosoftCloud = "global"
    # Proxy for OAuth HTTP requests; None: HTTPS_PROXY / NO_PROXY from the environment apply.
    proxy: ProxyConfig | None = None


@dataclass(frozen=True)
class GraphConfig:
    """Microsoft Graph settings of an account (used with ``send_via``/``read_via: graph``)."""

    url: str = "https://graph.microsoft.com/v1.0"  # national clouds: their Graph endpoint
    max_request_bytes: int = 4_000_000  # Graph's request limit (base64 MIME counts): PROTOCOLS 9.1
    large_messages: GraphLargeMessages = "refuse"  # upload_session: draft + attachment uploads
    max_messages: int = 1000  # POP3 snapshot cap (the newest are listed first by Graph)
    page_size: int = 100  # $top of each list request
    delete: GraphDeleteMode = "move"  # DELE at QUIT: move to Deleted Items, or delete
    timeout_s: float = 120.0
    ca_file: Path | None = None  # a private CA (tests, proxies); None: the system's
    verify_tls: bool = True


@dataclass(frozen=True)
class AccountConfig:
    """A local login that maps to one upstream mailbox."""

    name: str
    username: str  # the login the legacy app uses
    password_hash: str | None  # from `relay hash-password`; None only with allow_without_auth_from
    mailbox: str  # the upstream address, the XOAUTH2 `user=`
    credentials: str  # name of a CredentialsConfig
    smtp: UpstreamEndpoint | None  # None: this account does not send
    pop3: UpstreamEndpoint | None  # None: this account does not read mail
    imap: UpstreamEndpoint | None = None  # None: no IMAP access for this account
    allow_without_auth_from: tuple[IPNetwork, ...] = ()
    envelope_sender: EnvelopeSenderPolicy = "keep"
    # MAIL FROM addresses this account may use: addresses and ``*@domain``; empty: any.
    allowed_senders: tuple[str, ...] = ()
    # Concurrent upstream SMTP sessions for this mailbox; None: the provider's default (Microsoft
    # 3), 0: no cap.
    max_upstream_sessions: int | None = None
    # Concurrent upstream POP3 sessions for this mailbox; None: the provider's default, 0: no cap.
    max_upstream_pop3_sessions: int | None = None
    send_via: SendVia = "smtp"
    read_via: ReadVia = "pop3"
    graph: GraphConfig | None = None  # set (defaults filled) when send_via or read_via is graph

    @property
    def can_send(self) -> bool:
        """True when the account has an upstream to send through (SMTP server or Graph)."""
        return self.send_via == "graph" or self.smtp is not None

    @property
    def can_read(self) -> bool:
        """True when POP3 clients can read the account (upstream POP3 server or Graph)."""
        return self.read_via == "graph" or self.pop3 is not None


@dataclass(frozen=True)
class LimitsConfig:
    """Limits and timeouts, with defaults that suit a local relay."""

    max_message_bytes: int = 35 * 1024 * 1024
    max_connections: int = 1000  # per listener
    # Per client address (IPv6: per /64) and listener; loopback clients are exempt (see
    # relay.sessionlimits).
    max_connections_per_client: int = 100
    # A connection must log in (or, for trusted SMTP clients, send MAIL) within this time.
    login_timeout_s: float = 120.0
    # NOOP/RSET/HELP/refused commands allowed in a row without progress before the session closes.
    max_commands_without_progress: int = 50
    smtp_command_timeout_s: float = 300.0  # RFC 5321 4.5.3.2 suggests 5 minutes
    pop3_idle_timeout_s: float = 600.0  # RFC 1939: at least 10 minutes
    imap_idle_timeout_s: float = 1800.0  # RFC 9051 5.4 / RFC 2177: at least 30 minutes
    upstream_connect_timeout_s: float = 30.0
    upstream_command_timeout_s: float = 120.0
    upstream_data_timeout_s: float = 600.0
    auth_failure_delay_s: float = 1.0
    auth_failures_before_throttle: int = 5
    auth_throttle_window_s: float = 300.0
    # Renew this long before expiry: Exchange Online's High Volume Email refuses tokens that expire
    # within ~10 minutes (PROTOCOLS.md 9.3), so 15 minutes.
    token_refresh_margin_s: float = 900.0
    # Refresh every grant at least this often even when idle: Microsoft refresh tokens die after
    # 90 days unused.
    token_keepalive_days: float = 7.0
    # How long a session waits for a free upstream slot (accounts.NAME.max_upstream_sessions).
    upstream_slot_wait_s: float = 60.0
    # After the upstream refuses a freshly refreshed token: no token requests for this long
    # (doubling while it keeps happening, up to 15 min); sessions get a temporary error meanwhile.
    upstream_auth_cooldown_s: float = 60.0
    shutdown_grace_s: float = 30.0


@dataclass(frozen=True)
class PoolConfig:
    """Opt-in reuse of authenticated upstream SMTP sessions per account."""

    enabled: bool = False
    max_sessions_per_account: int = 4
    idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class AdminConfig:
    """The admin HTTP listener (/metrics, /healthz, /readyz, /status); off unless configured."""

    host: str = "127.0.0.1"
    port: int = 9025
    auth_token: Secret | None = None  # when set, every request needs `Authorization: Bearer <token>`


WebhookFormat = Literal["plain", "slack", "teams"]
"""`plain`: the alert as JSON fields; `slack` / `teams`: a JSON object with a `text` field."""


@dataclass(frozen=True)
class WebhookAlertConfig:
    """Alerts as a JSON POST to ``url``."""

    url: str
    format: WebhookFormat = "plain"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class EmailAlertConfig:
    """Alerts as an email sent upstream through one of the relay's own accounts."""

    account: str
    to: tuple[str, ...]
    sender: str | None = None  # YAML `from`; default: the account's mailbox


@dataclass(frozen=True)
class AlertsConfig:
    """When and where the relay tells its operator that something needs doing."""

    webhook: WebhookAlertConfig | None = None
    email: EmailAlertConfig | None = None
    check_interval_s: float = 30.0
    repeat_interval_s: float = 4 * 3600.0  # while a problem lasts, say it again this often
    refresh_failing_after_s: float = 3600.0  # token refresh failing for longer than this
    token_rejections: int = 3  # the upstream refused this many fresh tokens in a row
    certificate_expiry_days: int = 14  # a configured certificate expires within this many days


@dataclass(frozen=True)
class RelayConfig:
    """The whole configuration, as loaded from one YAML file."""

    listen: ListenConfig
    token_store: TokenStoreConfig
    credentials: Mapping[str, CredentialsConfig]
    accounts: Mapping[str, AccountConfig]
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    upstream_pool: PoolConfig = field(default_factory=PoolConfig)
    admin: AdminConfig | None = None  # None: no admin listener
    alerts: AlertsConfig | None = None  # None: problems are only logged
    source_path: Path | None = None  # the YAML file it came from, for messages

    def account_by_username(self, username: str) -> AccountConfig | None:
        """Return the account whose local login is ``username`` (case-sensitive), if any."""
        for account in self.accounts.values():
            if account.username == username:
                return account
        return None

    def credentials_for(self, account: AccountConfig) -> CredentialsConfig:
        """Return the credentials an account uses (validated to exist at load)."""
        return self.credentials[account.credentials]

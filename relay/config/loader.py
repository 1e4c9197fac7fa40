"""Load the YAML configuration into the frozen model of `relay.config.model`, validating everything.

Every problem is collected with its YAML path (``accounts.sales.credentials``) and raised at once
as one ConfigError, so an operator fixes them all in one go. Unknown keys are errors (a typo must
not be silently ignored) with the closest known key suggested. String values may reference the
environment (``${NAME}``) or a file (``${file:/run/secrets/x}``, e.g. Docker secrets).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from relay.config.expand import ExpansionError, expand_value
from relay.config.graph_settings import graph_choice
from relay.config.model import (
    AccountConfig,
    ClientCertificateConfig,
    CredentialsConfig,
    IPNetwork,
    LimitsConfig,
    ListenConfig,
    ListenerConfig,
    PoolConfig,
    ProxyConfig,
    RelayConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.config.ops_sections import build_admin, build_alerts
from relay.errors import ConfigError
from relay.localauth import is_loopback
from relay.passwords import parse_hash
from relay.secret import Secret
from relay.sender_policy import sender_pattern_problem

TLS_MODES = ("none", "starttls", "implicit")
BARE_LF_MODES = ("normalize", "reject")
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
FLOWS = ("authorization_code", "device_code", "client_credentials", "service_account")
SENDER_POLICIES = ("keep", "rewrite")
CLOUDS = ("global", "usgovernment", "china")
ASSERTION_ALGORITHMS = ("PS256", "RS256")
DEFAULT_LISTEN = {"smtp": ("127.0.0.1", 2525), "pop3": ("127.0.0.1", 1110), "imap": ("127.0.0.1", 1143)}
# Listeners that stay off unless the YAML has their key: IMAP came later, and an upgrade must not
# open a new port on its own.
OFF_UNLESS_CONFIGURED = frozenset({"imap"})
DEFAULT_STORE_FILE = "relay-tokens.enc"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAILBOX = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+")
_MISSING = object()
# Limits where 0 is meaningful (no delay); every other limit must be > 0.
_ZERO_ALLOWED_LIMITS = frozenset({"auth_failure_delay_s"})


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys (the second would silently win otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: SafeLoader reports it below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key '{key}' (remove one of them)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> RelayConfig:
    """Read and validate the YAML file at ``path``; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"configuration file {path} does not exist; pass --config FILE "
                          "(start from relay.example.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read configuration file {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("", f"{path}: invalid YAML{where}: {problem}") from None
    config = parse_config(data, source=str(path), env=env, base_dir=path.resolve().parent)
    return dataclasses.replace(config, source_path=path)


def parse_config(data: object, source: str = "<memory>", env: Mapping[str, str] | None = None,
                 base_dir: Path | None = None) -> RelayConfig:
    """Validate already-parsed YAML data (a mapping) and build the RelayConfig."""
    builder = _Builder(env if env is not None else os.environ, base_dir or Path.cwd())
    config = builder.build(data)
    if builder.problems or config is None:
        problems = builder.problems or [("", "the configuration is empty")]
        first_path, first_message = problems[0]
        raise ConfigError(first_path, first_message, problems=problems)
    return config


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class _Builder:
    """Builds the model while collecting (path, message) problems."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    # --- generic helpers -----------------------------------------------------------------------

    def mapping(self, value: object, path: str, known: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """Check ``value`` is a mapping with only ``known`` keys and all ``required`` ones."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping with keys {', '.join(known)} "
                         f"(got {type(value).__name__})")
            return None
        for key in value:
            if not isinstance(key, str) or key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.problem(_join(path, str(key)), f"unknown key '{key}'{hint} "
                             f"(known: {', '.join(known)})")
        for key in required:
            if value.get(key) is None:
                self.problem(_join(path, key), "is required")
        return {k: v for k, v in value.items() if isinstance(k, str) and k in known}

    def string(self, value: object, path: str, *, required: bool = False,
               secret: bool = False) -> str | None:
        if value is None:
            if required:
                self.problem(path, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(path, f"must be a string (got {type(value).__name__})")
            return None
        text = str(value)
        try:
            text = expand_value(text, self.env, self.base_dir)
        except ExpansionError as exc:
            self.problem(path, str(exc))
            return None
        if any(ch in "\r\n\x00\x01" for ch in text) and not secret:
            self.problem(path, "must not contain control characters (CR, LF, NUL, ^A)")
            return None
        if required and not text:
            self.problem(path, "must not be empty")
            return None
        return text

    def choice(self, value: object, path: str, choices: tuple[str, ...], default: str) -> str:
        text = self.string(value, path)
        if text is None:
            return default
        if text not in choices:
            self.problem(path, f"'{text}' is not one of {', '.join(choices)}")
            return default
        return text

    def boolean(self, value: object, path: str, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, str):
            expanded = self.string(value, path)
            lowered = (expanded or "").lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
        elif isinstance(value, bool):
            return value
        self.problem(path, f"must be true or false (got {value!r})")
        return default

    def number(self, value: object, path: str, default: Any, *, integer: bool,
               allow_zero: bool = False) -> Any:
        """A positive number (or >= 0 with ``allow_zero``); strings (from ${ENV}) are converted."""
        kind = "whole number" if integer else "number"
        if value is None:
            return default
        if isinstance(value, str):
            expanded = self.string(value, path)
            if expanded is None:
                return default
            try:
                value = int(expanded) if integer else float(expanded)
            except ValueError:
                self.problem(path, f"must be a {kind} (got '{expanded}')")
                return default
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                integer and not isinstance(value, int)):
            self.problem(path, f"must be a {kind} (got {value!r})")
            return default
        if not math.isfinite(value):
            self.problem(path, f"must be a finite {kind} (got {value})")
            return default
        if value < 0 or (value == 0 and not allow_zero):
            self.problem(path, f"must be {'>= 0' if allow_zero else '> 0'} (got {value})")
            return default
        return value

    def port(self, value: object, path: str, default: int | None, *, allow_zero: bool) -> int:
        if value is None:
            if default is None:
                self.problem(path, "is required")
                return 0
            return default
        if isinstance(value, str):
            value = self.string(value, path)
            if value is None:
                return default or 0
            try:
                value = int(value)
            except ValueError:
                self.problem(path, f"must be a whole number (got '{value}')")
                return default or 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be a whole number (got {value!r})")
            return default or 0
        port = value
        low = 0 if allow_zero else 1
        if not low <= port <= 65535:
            extra = " (0 means any free port)" if allow_zero else ""
            self.problem(path, f"port must be between {low} and 65535{extra} (got {port})")
            return default or 0
        return int(port)

    def file_path(self, value: object, path: str) -> Path | None:
        text = self.string(value, path)
        if not text:
            return None
        resolved = Path(text).expanduser()
        return resolved if resolved.is_absolute() else (self.base_dir / resolved)

    def networks(self, value: object, path: str) -> tuple[IPNetwork, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(path, "must be a list of networks such as [127.0.0.1/32, 10.0.0.0/8]")
            return ()
        nets: list[IPNetwork] = []
        for index, item in enumerate(value):
            text = self.string(item, f"{path}[{index}]")
            if text is None:
                continue
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.problem(f"{path}[{index}]", f"'{text}' is not an IP network (e.g. 172.16.0.0/12)")
        return tuple(nets)

    # --- sections ------------------------------------------------------------------------------

    def build(self, data: object) -> RelayConfig | None:
        top = self.mapping(data, "", _field_names(RelayConfig)[:-1], required=("accounts",))
        if top is None:
            return None
        listen = self.listen(top.get("listen"))
        store = self.token_store(top.get("token_store"))
        limits = self.dataclass_numbers(LimitsConfig, top.get("limits"), "limits")
        pool_data = self.mapping(top.get("upstream_pool"), "upstream_pool", _field_names(PoolConfig)) or {}
        pool = PoolConfig(
            enabled=self.boolean(pool_data.get("enabled"), "upstream_pool.enabled", False),
            max_sessions_per_account=self.number(
                pool_data.get("max_sessions_per_account"), "upstream_pool.max_sessions_per_account",
                PoolConfig.max_sessions_per_account, integer=True),
            idle_timeout_s=self.number(pool_data.get("idle_timeout_s"), "upstream_pool.idle_timeout_s",
                                       PoolConfig.idle_timeout_s, integer=False),
        )
        credentials, provider_classes = self.all_credentials(top.get("credentials"))
        accounts = self.all_accounts(top.get("accounts"), credentials, provider_classes)
        admin = build_admin(self, top.get("admin"))
        alerts = build_alerts(self, top.get("alerts"), accounts)
        return RelayConfig(listen=listen, token_store=store, credentials=credentials, accounts=accounts,
                           limits=limits, upstream_pool=pool, admin=admin, alerts=alerts)

    def listen(self, value: object) -> ListenConfig:
        data = self.mapping(value, "listen", ("smtp", "pop3", "imap")) or {}
        smtp = self.listener(data.get("smtp", _MISSING), "smtp")
        pop3 = self.listener(data.get("pop3", _MISSING), "pop3")
        imap = self.listener(data.get("imap", _MISSING), "imap")
        if smtp.enabled and pop3.enabled and smtp.port and (smtp.host, smtp.port) == (pop3.host, pop3.port):
            self.problem("listen.pop3.port", f"{pop3.host}:{pop3.port} is already the SMTP listener's "
                         "address; give POP3 another port")
        for other_name, other in (("SMTP", smtp), ("POP3", pop3)):
            same = (imap.host, imap.port) == (other.host, other.port)
            if imap.enabled and other.enabled and imap.port and same:
                self.problem("listen.imap.port", f"{imap.host}:{imap.port} is already the {other_name} "
                             "listener's address; give IMAP another port")
        return ListenConfig(smtp=smtp, pop3=pop3, imap=imap)

    def listener(self, value: object, name: str) -> ListenerConfig:
        path = f"listen.{name}"
        host, port = DEFAULT_LISTEN[name]
        if value is _MISSING and name in OFF_UNLESS_CONFIGURED:
            return ListenerConfig(enabled=False, host=host, port=port)
        if value is _MISSING or value is None or value is True:
            return ListenerConfig(enabled=True, host=host, port=port)
        if value is False:
            return ListenerConfig(enabled=False, host=host, port=port)
        data = self.mapping(value, path, _field_names(ListenerConfig)) or {}
        tls = self.choice(data.get("tls"), f"{path}.tls", TLS_MODES, "none")
        cert = self.file_path(data.get("cert_file"), f"{path}.cert_file")
        key = self.file_path(data.get("key_file"), f"{path}.key_file")
        enabled = self.boolean(data.get("enabled"), f"{path}.enabled", True)
        if enabled and tls != "none":
            for field, file in (("cert_file", cert), ("key_file", key)):
                if file is None:
                    self.problem(f"{path}.{field}", f"is required with tls: {tls}")
                elif not file.is_file():
                    self.problem(f"{path}.{field}", f"file {file} does not exist")
        return ListenerConfig(
            enabled=enabled,
            host=self.string(data.get("host"), f"{path}.host") or host,
            port=self.port(data.get("port"), f"{path}.port", port, allow_zero=True),
            tls=tls,  # type: ignore[arg-type]
            cert_file=cert, key_file=key,
            allow_plaintext_auth_from=self.networks(data.get("allow_plaintext_auth_from"),
                                                    f"{path}.allow_plaintext_auth_from"),
            bare_lf=self.choice(data.get("bare_lf"), f"{path}.bare_lf",  # type: ignore[arg-type]
                                BARE_LF_MODES, "normalize"),
            min_tls_version=self.choice(  # type: ignore[arg-type]
                _version_text(data.get("min_tls_version")), f"{path}.min_tls_version",
                TLS_VERSIONS, "1.2"),
        )

    def token_store(self, value: object) -> TokenStoreConfig:
        data = self.mapping(value, "token_store", _field_names(TokenStoreConfig)) or {}
        path = self.file_path(data.get("path"), "token_store.path") or self.base_dir / DEFAULT_STORE_FILE
        key_env: str | None = TokenStoreConfig.key_env
        if "key_env" in data:
            key_env = self.string(data.get("key_env"), "token_store.key_env")
            if key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
                self.problem("token_store.key_env", f"'{key_env}' is not a valid environment variable name")
        key_file = self.file_path(data.get("key_file"), "token_store.key_file")
        if not key_env and key_file is None:
            self.problem("token_store", "needs key_env or key_file for the store's encryption key "
                         "(create one with `relay init-key`)")
        backend = self.string(data.get("backend"), "token_store.backend") or "file"
        if backend not in ("file", "redis"):
            self.problem("token_store.backend", f"must be file or redis (got '{backend}')")
            backend = "file"
        url = self.string(data.get("url"), "token_store.url")
        if backend == "redis" and not url:
            self.problem("token_store.url", "backend: redis needs url: redis://HOST:PORT/DB (or rediss://)")
        if url and not url.startswith(("redis://", "rediss://", "unix://", "valkey://", "valkeys://")):
            self.problem("token_store.url", "must start with redis://, rediss:// or unix://")
        url = url.replace("valkey", "redis", 1) if url and url.startswith("valkey") else url
        password = self.string(data.get("password"), "token_store.password")
        prefix = self.string(data.get("key_prefix"), "token_store.key_prefix")
        lease = self.number(data.get("lease_ttl_s"), "token_store.lease_ttl_s", TokenStoreConfig.lease_ttl_s,
                            integer=False)
        return TokenStoreConfig(path=path, key_env=key_env or None, key_file=key_file,
                                backend=backend,  # type: ignore[arg-type]
                                url=url or None, key_prefix=prefix or TokenStoreConfig.key_prefix,
                                password=Secret(password) if password else None, lease_ttl_s=float(lease))

    def dataclass_numbers(self, cls: type, value: object, path: str) -> Any:
        data = self.mapping(value, path, _field_names(cls)) or {}
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in data:
                integer = isinstance(field.default, int) and not isinstance(field.default, bool)
                values[field.name] = self.number(data[field.name], f"{path}.{field.name}", field.default,
                                                 integer=integer,
                                                 allow_zero=field.name in _ZERO_ALLOWED_LIMITS)
        return cls(**values)

    def all_credentials(self, value: object) -> tuple[dict[str, CredentialsConfig], dict[str, type]]:
        credentials: dict[str, CredentialsConfig] = {}
        classes: dict[str, type] = {}
        if value is None:
            return credentials, classes
        if not isinstance(value, dict):
            self.problem("credentials", "must be a mapping of names to credentials")
            return credentials, classes
        for name, item in value.items():
            path = f"credentials.{name}"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                self.problem(path, "a name must be letters, digits, '.', '_' or '-'")
                continue
            built = self.credentials(name, item, path)
            if built is not None:
                credentials[name], provider_class = built
                if provider_class is not None:
                    classes[name] = provider_class
        return credentials, classes

    def credentials(self, name: str, value: object,
                    path: str) -> tuple[CredentialsConfig, type | None] | None:
        data = self.mapping(value, path, _field_names(CredentialsConfig)[1:],
                            required=("provider", "client_id"))
        if data is None:
            return None
        secret_text = self.string(data.get("client_secret"), f"{path}.client_secret", secret=True)
        scopes = self.scope_list(data.get("scopes"), f"{path}.scopes")
        options_data = data.get("options") or {}
        options: dict[str, str] = {}
        if isinstance(options_data, dict):
            for key, item in options_data.items():
                text = self.string(item, f"{path}.options.{key}")
                if text is not None:
                    options[str(key)] = text
        else:
            self.problem(f"{path}.options", "must be a mapping of option names to strings")
        creds = CredentialsConfig(
            name=name,
            provider=self.string(data.get("provider"), f"{path}.provider") or "",
            client_id=self.string(data.get("client_id"), f"{path}.client_id") or "",
            flow=self.choice(data.get("flow"), f"{path}.flow", FLOWS, "authorization_code"),  # type: ignore[arg-type]
            client_secret=Secret(secret_text) if secret_text else None,
            tenant_id=self.string(data.get("tenant_id"), f"{path}.tenant_id") or None,
            scopes=scopes,
            graph_scopes=self.scope_list(data.get("graph_scopes"), f"{path}.graph_scopes"),
            redirect_port=self.port(data.get("redirect_port"), f"{path}.redirect_port", 0, allow_zero=True),
            redirect_host=self.string(data.get("redirect_host"), f"{path}.redirect_host") or None,
            authorize_url=self.url(data.get("authorize_url"), f"{path}.authorize_url"),
            token_url=self.url(data.get("token_url"), f"{path}.token_url"),
            device_authorization_url=self.url(data.get("device_authorization_url"),
                                              f"{path}.device_authorization_url"),
            revocation_url=self.url(data.get("revocation_url"), f"{path}.revocation_url"),
            service_account_file=self.file_path(data.get("service_account_file"),
                                                f"{path}.service_account_file"),
            options=options,
            client_certificate=self.client_certificate(data.get("client_certificate"),
                                                       f"{path}.client_certificate"),
            cloud=self.choice(data.get("cloud"), f"{path}.cloud", CLOUDS, "global"),  # type: ignore[arg-type]
            proxy=self.proxy(data.get("proxy"), f"{path}.proxy"),
        )
        if creds.service_account_file is not None and not creds.service_account_file.is_file():
            self.problem(f"{path}.service_account_file", f"file {creds.service_account_file} does not exist")
        provider_class = None
        if creds.provider:
            from relay.providers.registry import load_provider_class  # noqa: PLC0415 (avoid import cycle)

            try:
                provider_class = load_provider_class(creds.provider)
            except ConfigError as exc:
                self.problem(f"{path}.provider", exc.message)
            else:
                for field, message in provider_class.config_problems(creds):
                    self.problem(f"{path}.{field}", message)
        return creds, provider_class

    def scope_list(self, value: object, path: str) -> tuple[str, ...] | None:
        """A list of scopes (or one space-separated string); None when not given."""
        if value is None:
            return None
        if isinstance(value, str):
            return tuple((self.string(value, path) or "").split())
        if isinstance(value, list):
            return tuple(s for i, v in enumerate(value) if (s := self.string(v, f"{path}[{i}]")))
        self.problem(path, "must be a list of scope strings")
        return None

    def url(self, value: object, path: str) -> str | None:
        text = self.string(value, path)
        if not text:
            return None
        if not re.match(r"https?://[^\s/]+", text):
            self.problem(path, f"'{text}' is not an http(s) URL")
            return None
        return text

    def all_accounts(self, value: object, credentials: dict[str, CredentialsConfig],
                     classes: dict[str, type]) -> dict[str, AccountConfig]:
        accounts: dict[str, AccountConfig] = {}
        if value is None:
            return accounts
        if not isinstance(value, dict) or not value:
            self.problem("accounts", "must be a mapping of account names to accounts (at least one)")
            return accounts
        usernames: dict[str, str] = {}
        for name, item in value.items():
            path = f"accounts.{name}"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                self.problem(path, "a name must be letters, digits, '.', '_' or '-'")
                continue
            account = self.account(name, item, path, credentials, classes)
            if account is None:
                continue
            if account.username in usernames:
                self.problem(f"{path}.username", f"'{account.username}' is already the username of "
                             f"account '{usernames[account.username]}'; local usernames must be unique")
            usernames[account.username] = name
            accounts[name] = account
        return accounts

    def account(self, name: str, value: object, path: str, credentials: dict[str, CredentialsConfig],
                classes: dict[str, type]) -> AccountConfig | None:
        data = self.mapping(value, path, _field_names(AccountConfig)[1:],
                            required=("username", "mailbox", "credentials"))
        if data is None:
            return None
        username = self.string(data.get("username"), f"{path}.username") or ""
        password_hash = self.string(data.get("password_hash"), f"{path}.password_hash", secret=True)
        if password_hash:
            try:
                parse_hash(password_hash)
            except ValueError as exc:
                self.problem(f"{path}.password_hash", f"{exc}; create one with `relay hash-password`")
        mailbox = self.string(data.get("mailbox"), f"{path}.mailbox") or ""
        if mailbox and not _MAILBOX.fullmatch(mailbox):
            self.problem(f"{path}.mailbox", f"'{mailbox}' is not an email address")
        creds_name = self.string(data.get("credentials"), f"{path}.credentials") or ""
        provider_class = classes.get(creds_name)
        if creds_name and creds_name not in credentials:
            known = ", ".join(credentials) or "none defined"
            self.problem(f"{path}.credentials", f"no credentials named '{creds_name}' (known: {known})")
        trusted = self.networks(data.get("allow_without_auth_from"), f"{path}.allow_without_auth_from")
        if not password_hash and not trusted:
            self.problem(path, "needs password_hash (from `relay hash-password`) or allow_without_auth_from")
        default_smtp = getattr(provider_class, "default_smtp", None)
        default_pop3 = getattr(provider_class, "default_pop3", None)
        default_imap = getattr(provider_class, "default_imap", None)
        upstream_defaults = getattr(provider_class, "upstream_defaults", None)
        if creds_name in credentials and upstream_defaults is not None:
            default_smtp, default_pop3, default_imap = upstream_defaults(credentials[creds_name])
        smtp_cap = self.number(data.get("max_upstream_sessions"), f"{path}.max_upstream_sessions", None,
                               integer=True, allow_zero=True)
        pop3_cap = self.number(data.get("max_upstream_pop3_sessions"), f"{path}.max_upstream_pop3_sessions",
                               None, integer=True, allow_zero=True)
        send_via, read_via, graph = graph_choice(self, data, path, credentials.get(creds_name),
                                                 provider_class)
        return AccountConfig(
            name=name, username=username, password_hash=password_hash or None, mailbox=mailbox,
            credentials=creds_name,
            # With Graph chosen, the SMTP/POP3 server is not used unless given (e.g. for `relay check`).
            smtp=self.endpoint(data.get("smtp", False if send_via == "graph" else _MISSING), f"{path}.smtp",
                               default_smtp, provider_class is not None),
            pop3=self.endpoint(data.get("pop3", False if read_via == "graph" else _MISSING), f"{path}.pop3",
                               default_pop3, provider_class is not None),
            # No problem when the provider has no IMAP default: IMAP came later, so existing
            # generic-provider accounts without an `imap:` key simply have no IMAP access.
            imap=self.endpoint(data.get("imap", _MISSING), f"{path}.imap", default_imap, False),
            allow_without_auth_from=trusted,
            envelope_sender=self.choice(data.get("envelope_sender"), f"{path}.envelope_sender",  # type: ignore[arg-type]
                                        SENDER_POLICIES, "keep"),
            allowed_senders=self.allowed_senders(data.get("allowed_senders"), f"{path}.allowed_senders"),
            max_upstream_sessions=smtp_cap if smtp_cap is not None else getattr(
                provider_class, "default_max_smtp_sessions", None),
            max_upstream_pop3_sessions=pop3_cap if pop3_cap is not None else getattr(
                provider_class, "default_max_pop3_sessions", None),
            send_via=send_via,  # type: ignore[arg-type]
            read_via=read_via,  # type: ignore[arg-type]
            graph=graph,
        )

    def allowed_senders(self, value: object, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(path, "must be a list of addresses and '*@domain' patterns")
            return ()
        out: list[str] = []
        for index, item in enumerate(value):
            text = self.string(item, f"{path}[{index}]")
            if text is None:
                continue
            problem = sender_pattern_problem(text.strip())
            if problem:
                self.problem(f"{path}[{index}]", problem)
            else:
                out.append(text.strip())
        return tuple(out)

    def client_certificate(self, value: object, path: str) -> ClientCertificateConfig | None:
        if value is None:
            return None
        data = self.mapping(value, path, _field_names(ClientCertificateConfig),
                            required=("cert_file", "key_file"))
        if data is None:
            return None
        cert = self.file_path(data.get("cert_file"), f"{path}.cert_file")
        key = self.file_path(data.get("key_file"), f"{path}.key_file")
        for file, key_name in ((cert, "cert_file"), (key, "key_file")):
            if file is not None and not file.is_file():
                self.problem(f"{path}.{key_name}", f"file {file} does not exist")
        passphrase = self.string(data.get("key_passphrase"), f"{path}.key_passphrase", secret=True)
        if cert is None or key is None:
            return None
        return ClientCertificateConfig(
            cert_file=cert, key_file=key, key_passphrase=Secret(passphrase) if passphrase else None,
            algorithm=self.choice(data.get("algorithm"), f"{path}.algorithm",  # type: ignore[arg-type]
                                  ASSERTION_ALGORITHMS, "PS256"))

    def proxy(self, value: object, path: str) -> ProxyConfig | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = {"url": value}
        data = self.mapping(value, path, _field_names(ProxyConfig), required=("url",))
        if data is None:
            return None
        url = self.url(data.get("url"), f"{path}.url")
        if url and "@" in url.split("//", 1)[-1].split("/", 1)[0]:
            self.problem(f"{path}.url", "must not contain credentials; use username and password "
                         "(password from ${file:...})")
            return None
        username = self.string(data.get("username"), f"{path}.username")
        password = self.string(data.get("password"), f"{path}.password", secret=True)
        if password and not username:
            self.problem(f"{path}.username", "is required when password is set")
        if url is None:
            return None
        return ProxyConfig(url=url, username=username or None,
                           password=Secret(password) if password else None)

    def endpoint(self, value: object, path: str, default: UpstreamEndpoint | None,
                 check_default: bool) -> UpstreamEndpoint | None:
        if value is False:
            return None
        if value is _MISSING or value is None or value is True:
            if default is None and check_default:
                self.problem(path, "the provider has no default server: give host, port and tls, "
                             "or false to turn this service off")
            return default
        smtp = path.endswith(".smtp")  # `pipelining` is an SMTP setting: unknown under pop3/imap
        keys = tuple(k for k in _field_names(UpstreamEndpoint) if smtp or k != "pipelining")
        data = self.mapping(value, path, keys)
        if data is None:
            return default
        host = self.string(data.get("host"), f"{path}.host") or (default.host if default else None)
        if host is None:
            self.problem(f"{path}.host", "is required")
            host = ""
        tls_default = default.tls if default else "starttls"
        ca_file = self.file_path(data.get("ca_file"), f"{path}.ca_file")
        if ca_file is not None and not ca_file.is_file():
            self.problem(f"{path}.ca_file", f"file {ca_file} does not exist")
        tls = self.choice(data.get("tls"), f"{path}.tls", TLS_MODES, tls_default)
        if tls == "none" and host and not is_loopback(host):
            # XOAUTH2 carries the bearer token itself: in clear text anyone on the path could use it.
            self.problem(f"{path}.tls", f"'none' would send the access token unencrypted to {host}; "
                         "use starttls or implicit (plaintext is allowed only to loopback hosts)")
        return UpstreamEndpoint(
            host=host,
            port=self.port(data.get("port"), f"{path}.port", default.port if default else None,
                           allow_zero=False),
            tls=tls,  # type: ignore[arg-type]
            ca_file=ca_file,
            verify_tls=self.boolean(data.get("verify_tls"), f"{path}.verify_tls", True),
            pipelining=self.boolean(data.get("pipelining"), f"{path}.pipelining", True),
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _version_text(value: object) -> object:
    """YAML reads ``min_tls_version: 1.0`` as the float 1.0: take it as the text "1.0"."""
    if isinstance(value, float):
        return f"{value:.1f}"
    return value

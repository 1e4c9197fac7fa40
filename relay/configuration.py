"""Load the relay's configuration: phase 1 (structure, `relay.config`) then phase 2 (meaning, here).

Phase 2 checks what a single key cannot: files that settings name, TLS rules, providers (built-in
or plug-in) and the upstream servers they default to, unique usernames and listener addresses,
references between sections. Every problem of both phases is collected with its YAML path
(``accounts.sales.credentials``) and raised at once as one ConfigError, in document order, so an
operator fixes them all in one go. This module sits above `relay.config` and `relay.providers`,
so neither imports the other's loader.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.config.parsers import EndpointOverride
from relay.config.structure import read_document, read_structure
from relay.configuration_graph import resolve_graph
from relay.configuration_ops import check_admin, check_alerts
from relay.errors import ConfigError
from relay.localauth import is_loopback
from relay.passwords import parse_hash
from relay.providers.base import OAuthProvider, UpstreamDefaults
from relay.providers.registry import load_provider_class
from relay.sender_policy import sender_pattern_problem

Problems = list[tuple[str, str]]


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> RelayConfig:
    """Read and validate the YAML file at ``path``; raise ConfigError listing every problem."""
    path = Path(path)
    data = read_document(path)
    config = parse_config(data, source=str(path), env=env, base_dir=path.resolve().parent)
    return dataclasses.replace(config, source_path=path)


def parse_config(data: object, source: str = "<memory>", env: Mapping[str, str] | None = None,
                 base_dir: Path | None = None) -> RelayConfig:
    """Validate already-parsed YAML data (a mapping) and build the RelayConfig."""
    structure = read_structure(data, env if env is not None else os.environ, base_dir or Path.cwd())
    problems = structure.reader.problems
    config = structure.config
    if config is not None:
        config = _Semantics(problems).check(config)
    if problems or config is None:
        raise structure.error(problems or [("", "the configuration is empty")])
    return config


class _Semantics:
    """Phase 2 over a phase-1 model (possibly with problems already): checks and resolution."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.providers: dict[str, type[OAuthProvider]] = {}

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def check(self, config: RelayConfig) -> RelayConfig:
        """Check ``config`` and return it with each account's upstream servers resolved."""
        self.listeners(config)
        store = self.token_store(config.token_store)
        for name, creds in config.credentials.items():
            self.credentials(creds, f"credentials.{name}")
        accounts = {name: self.account(account, f"accounts.{name}", config)
                    for name, account in config.accounts.items()}
        self.unique_usernames(accounts)
        check_admin(config.admin, self.problem)
        check_alerts(config.alerts, accounts, self.problem)
        if config.spool.retry_max_s < config.spool.retry_initial_s:
            self.problem("spool.retry_max_s", "must be >= spool.retry_initial_s")
        return dataclasses.replace(config, token_store=store, accounts=accounts)

    def token_store(self, store: TokenStoreConfig) -> TokenStoreConfig:
        if not store.key_env and store.key_file is None:
            self.problem("token_store", "needs key_env or key_file for the store's encryption key "
                         "(create one with `relay init-key`)")
        url = store.url
        if store.backend == "redis" and not url:
            self.problem("token_store.url", "backend: redis needs url: redis://HOST:PORT/DB (or rediss://)")
        if url and not url.startswith(("redis://", "rediss://", "unix://", "valkey://", "valkeys://")):
            self.problem("token_store.url", "must start with redis://, rediss:// or unix://")
        if url and url.startswith("valkey"):
            return dataclasses.replace(store, url=url.replace("valkey", "redis", 1))
        return store

    def listeners(self, config: RelayConfig) -> None:
        listen = config.listen
        named = (("smtp", listen.smtp), ("pop3", listen.pop3), ("imap", listen.imap))
        for name, listener in named:
            self.listener_tls(listener, f"listen.{name}")
        for index, (name, listener) in enumerate(named):
            for other_name, other in named[:index]:
                if listener.enabled and other.enabled and listener.port and \
                        (listener.host, listener.port) == (other.host, other.port):
                    self.problem(f"listen.{name}.port", f"{listener.host}:{listener.port} is already the "
                                 f"{other_name.upper()} listener's address; give {name.upper()} another port")

    def listener_tls(self, listener: ListenerConfig, path: str) -> None:
        if not listener.enabled or listener.tls == "none":
            return
        for field, file in (("cert_file", listener.cert_file), ("key_file", listener.key_file)):
            if file is None:
                self.problem(f"{path}.{field}", f"is required with tls: {listener.tls}")
            else:
                self.existing_file(file, f"{path}.{field}")

    def existing_file(self, file: Path | None, path: str) -> None:
        """A file a setting names must be a regular file (a FIFO would hang whoever reads it)."""
        if file is None or file.is_file():
            return
        if file.exists():
            self.problem(path, f"{file} is not a regular file")
        else:
            self.problem(path, f"file {file} does not exist")

    def credentials(self, creds: CredentialsConfig, path: str) -> None:
        self.existing_file(creds.service_account_file, f"{path}.service_account_file")
        if creds.client_certificate is not None:
            self.existing_file(creds.client_certificate.cert_file, f"{path}.client_certificate.cert_file")
            self.existing_file(creds.client_certificate.key_file, f"{path}.client_certificate.key_file")
        if creds.proxy is not None:
            if "@" in creds.proxy.url.split("//", 1)[-1].split("/", 1)[0]:
                self.problem(f"{path}.proxy.url", "must not contain credentials; use username and "
                             "password (password from ${file:...})")
            if creds.proxy.password and not creds.proxy.username:
                self.problem(f"{path}.proxy.username", "is required when password is set")
        if not creds.provider:
            return
        try:
            provider = load_provider_class(creds.provider)
        except ConfigError as exc:
            self.problem(f"{path}.provider", exc.message)
            return
        self.providers[creds.name] = provider
        for field, message in provider.config_problems(creds):
            self.problem(f"{path}.{field}", message)

    def account(self, account: AccountConfig, path: str, config: RelayConfig) -> AccountConfig:
        if account.password_hash:
            try:
                parse_hash(account.password_hash)
            except ValueError as exc:
                self.problem(f"{path}.password_hash", f"{exc}; create one with `relay hash-password`")
        if account.credentials and account.credentials not in config.credentials:
            known = ", ".join(config.credentials) or "none defined"
            self.problem(f"{path}.credentials", f"no credentials named '{account.credentials}' "
                         f"(known: {known})")
        if not account.password_hash and not account.allow_without_auth_from:
            self.problem(path, "needs password_hash (from `relay hash-password`) or allow_without_auth_from")
        for index, entry in enumerate(account.allowed_senders):
            if problem := sender_pattern_problem(entry):
                self.problem(f"{path}.allowed_senders[{index}]", problem)
        return self.resolve_account(account, path, config)

    def resolve_account(self, account: AccountConfig, path: str, config: RelayConfig) -> AccountConfig:
        """The account with its upstream servers and session caps from the provider's defaults."""
        provider = self.providers.get(account.credentials)
        creds = config.credentials.get(account.credentials)
        defaults: UpstreamDefaults = (None, None, None)
        if provider is not None and creds is not None:
            defaults = provider.upstream_defaults(creds)
        smtp_cap, pop3_cap = account.max_upstream_sessions, account.max_upstream_pop3_sessions
        def hint(service: str) -> str:
            return provider.default_server_hint(creds, service) if provider and creds else ""

        graph = resolve_graph(account, path, creds, provider, self.problem)
        # With Graph chosen, the SMTP/POP3 server is not used unless written (e.g. for `relay check`).
        smtp_default = None if account.send_via == "graph" else defaults[0]
        pop3_default = None if account.read_via == "graph" else defaults[1]
        return dataclasses.replace(
            account,
            graph=graph,
            smtp=self.endpoint(account.smtp_written, f"{path}.smtp", provider, smtp_default,
                               required=account.send_via != "graph", hint=hint("smtp")),
            pop3=self.endpoint(account.pop3_written, f"{path}.pop3", provider, pop3_default,
                               required=account.read_via != "graph", hint=hint("pop3")),
            # No problem when the provider has no IMAP default: IMAP came later, so existing
            # generic-provider accounts without an `imap:` key simply have no IMAP access.
            imap=self.endpoint(account.imap_written, f"{path}.imap", provider, defaults[2], required=False),
            max_upstream_sessions=smtp_cap if smtp_cap is not None else getattr(
                provider, "default_max_smtp_sessions", None),
            max_upstream_pop3_sessions=pop3_cap if pop3_cap is not None else getattr(
                provider, "default_max_pop3_sessions", None))

    def endpoint(self, written: EndpointOverride, path: str, provider: type[OAuthProvider] | None,
                 default: UpstreamEndpoint | None, *, required: bool = True,
                 hint: str = "") -> UpstreamEndpoint | None:
        """The server from what is written and the provider's ``default``
        (``required``: a provider without a default needs the server written, or ``false``)."""
        if written.off:
            return None
        if not written.values:
            if default is None and provider is not None and required:
                self.problem(path, "the provider has no default server: give host, port and tls, "
                             f"or false to turn this service off{hint}")
            return default
        values = dict(written.values)
        base = {"host": "", "port": 0, "tls": "starttls"}
        if default is not None:
            base = {"host": default.host, "port": default.port, "tls": default.tls}
        for name in ("host", "port"):
            if name not in values and not base[name]:
                self.problem(f"{path}.{name}", f"is required{hint}")
        resolved = UpstreamEndpoint(**{**base, **values})
        self.existing_file(resolved.ca_file, f"{path}.ca_file")
        if resolved.tls == "none" and resolved.host and not is_loopback(resolved.host):
            # XOAUTH2 carries the bearer token itself: in clear text anyone on the path could use it.
            self.problem(f"{path}.tls", f"'none' would send the access token unencrypted to "
                         f"{resolved.host}; use starttls or implicit (plaintext is allowed only to "
                         "loopback hosts)")
        return resolved

    def unique_usernames(self, accounts: Mapping[str, AccountConfig]) -> None:
        owners: dict[str, str] = {}
        for name, account in accounts.items():
            if account.username and account.username in owners:
                self.problem(f"accounts.{name}.username", f"'{account.username}' is already the "
                             f"username of account '{owners[account.username]}'; local usernames "
                             "must be unique")
            owners.setdefault(account.username, name)

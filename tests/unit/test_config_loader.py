"""Unit tests for the YAML configuration loader (relay.configuration)."""

# The tests read optional fields (account.smtp, client_secret) of configurations they just built
# with those fields set; a None there fails the test with an AttributeError anyway.
# mypy: disable-error-code="union-attr"

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config.model import AccountConfig, LimitsConfig, PoolConfig, RelayConfig, UpstreamEndpoint
from relay.config.schema import yaml_keys
from relay.configuration import load_config, parse_config
from relay.errors import ConfigError
from relay.passwords import hash_password

HASH = hash_password("pw", log2_n=4)
REPO = Path(__file__).resolve().parents[2]


def base() -> dict[str, Any]:
    """A small valid configuration as parsed YAML."""
    return {
        "token_store": {"key_env": "RELAY_STORE_KEY"},
        "credentials": {"contoso": {"provider": "microsoft", "client_id": "abc", "tenant_id": "t.example",
                                    "client_secret": "${SECRET}"}},
        "accounts": {"sales": {"username": "erp", "password_hash": HASH, "mailbox": "sales@contoso.com",
                               "credentials": "contoso"}},
    }


def problems(data: Any, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The (path, message) problems parse_config reports."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env if env is not None else {"SECRET": "s"})
    return info.value.problems


def test_full_valid_config_gets_defaults_and_provider_endpoints() -> None:
    """A minimal config is filled with listener defaults and Microsoft's upstream servers."""
    config = parse_config(base(), env={"SECRET": "s3"})
    assert (config.listen.smtp.host, config.listen.smtp.port) == ("127.0.0.1", 2525)
    assert (config.listen.pop3.host, config.listen.pop3.port) == ("127.0.0.1", 1110)
    account = config.accounts["sales"]
    assert (account.smtp.host, account.smtp.port, account.smtp.tls) == ("smtp.office365.com", 587, "starttls")
    assert (account.pop3.host, account.pop3.port, account.pop3.tls) == (
        "outlook.office365.com", 995, "implicit")
    assert config.credentials["contoso"].client_secret.reveal() == "s3"
    assert "s3" not in repr(config)
    assert config.account_by_username("erp") is account


def test_google_defaults_and_switching_services_off() -> None:
    """Gmail accounts default to Google's servers; `pop3: false` turns POP3 off."""
    data = base()
    data["credentials"]["g"] = {"provider": "google", "client_id": "x"}
    data["accounts"]["g"] = {"username": "g", "password_hash": HASH, "mailbox": "g@gmail.com",
                             "credentials": "g", "pop3": False}
    config = parse_config(data, env={"SECRET": "s"})
    assert (config.accounts["g"].smtp.host, config.accounts["g"].smtp.port) == ("smtp.gmail.com", 587)
    assert config.accounts["g"].pop3 is None


def test_unknown_key_is_an_error_with_suggestion() -> None:
    """A misspelled key is reported at its path with the closest known key."""
    data = base()
    data["accounts"]["sales"]["pasword_hash"] = "x"
    [(path, message)] = problems(data)
    assert path == "accounts.sales.pasword_hash"
    assert message == ("unknown key 'pasword_hash'; did you mean 'password_hash'? (known: username, "
                       "password_hash, mailbox, credentials, smtp, pop3, imap, allow_without_auth_from, "
                       "envelope_sender, allowed_senders, max_upstream_sessions, max_upstream_pop3_sessions, "
                       "send_via, read_via, graph, delivery)")


def test_bad_credentials_reference_names_known_ones() -> None:
    """A reference to missing credentials names the known ones (the issue's example message)."""
    data = base()
    data["accounts"]["sales"]["credentials"] = "contso"
    assert ("accounts.sales.credentials", "no credentials named 'contso' (known: contoso)") in problems(data)


def test_missing_env_var_is_named() -> None:
    """An unset ${VAR} is an error naming the variable and the YAML path."""
    [(path, message)] = problems(base(), env={})
    assert path == "credentials.contoso.client_secret"
    assert "SECRET is not set" in message


def test_file_reference_is_read_and_unreadable_file_reported(tmp_path: Path) -> None:
    """${file:...} reads a secret file (newline stripped); a missing file is an error naming it."""
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    data = base()
    data["credentials"]["contoso"]["client_secret"] = f"${{file:{secret}}}"
    assert parse_config(data, env={}).credentials["contoso"].client_secret.reveal() == "from-file"
    data["credentials"]["contoso"]["client_secret"] = f"${{file:{tmp_path / 'nope'}}}"
    [(path, message)] = problems(data)
    assert path == "credentials.contoso.client_secret" and "nope" in message


def test_literal_dollar_brace_escape() -> None:
    """$${ stands for a literal ${."""
    data = base()
    data["credentials"]["contoso"]["client_secret"] = "a$${b}"
    assert parse_config(data, env={}).credentials["contoso"].client_secret.reveal() == "a${b}"


@pytest.mark.parametrize("port", [70000, -1, "abc", True])
def test_bad_port(port: object) -> None:
    """Ports outside 0..65535 or not numbers are errors at their path."""
    data = base()
    data["listen"] = {"smtp": {"port": port}}
    [(path, message)] = problems(data)
    assert path == "listen.smtp.port"
    assert message in (f"port must be between 0 and 65535 (0 means any free port) (got {port})",
                       f"must be a whole number (got {port!r})", f"must be a whole number (got '{port}')")


def test_upstream_port_zero_is_refused() -> None:
    """Port 0 means "any free port" only for listeners, never for an upstream server."""
    data = base()
    data["accounts"]["sales"]["smtp"] = {"port": 0}
    assert problems(data) == [("accounts.sales.smtp.port", "port must be between 1 and 65535 (got 0)")]


def test_missing_tenant_for_microsoft() -> None:
    """Microsoft requires tenant_id; the error is at credentials.NAME.tenant_id."""
    data = base()
    del data["credentials"]["contoso"]["tenant_id"]
    [(path, message)] = problems(data)
    assert path == "credentials.contoso.tenant_id" and "requires tenant_id" in message


def test_unknown_provider_and_unsupported_flow() -> None:
    """An unknown provider and a flow the provider does not support are reported."""
    data = base()
    data["credentials"]["contoso"]["flow"] = "service_account"
    data["credentials"]["other"] = {"provider": "nosuch", "client_id": "x"}
    paths = [p for p, _ in problems(data)]
    assert "credentials.contoso.flow" in paths and "credentials.other.provider" in paths


def test_bad_tls_mode_and_listener_tls_without_cert() -> None:
    """A TLS mode outside none/starttls/implicit, and listener TLS without cert/key, are errors."""
    data = base()
    data["listen"] = {"smtp": {"tls": "ssl"}, "pop3": {"tls": "implicit"}}
    assert problems(data) == [("listen.smtp.tls", "'ssl' is not one of none, starttls, implicit"),
                              ("listen.pop3.cert_file", "is required with tls: implicit"),
                              ("listen.pop3.key_file", "is required with tls: implicit")]


def test_listeners_can_be_switched_off_and_must_not_collide() -> None:
    """`pop3: false` disables a listener; two enabled listeners on one address are an error."""
    data = base()
    data["listen"] = {"pop3": False}
    config = parse_config(data, env={"SECRET": "s"})
    assert config.listen.smtp.enabled and not config.listen.pop3.enabled
    data["listen"] = {"smtp": {"port": 2600}, "pop3": {"port": 2600}}
    assert [p for p, _ in problems(data)] == ["listen.pop3.port"]
    data["listen"] = {"smtp": {"port": 0}, "pop3": {"port": 0}}  # two free ports, no clash
    assert parse_config(data, env={"SECRET": "s"}).listen.pop3.port == 0


def test_duplicate_usernames_and_account_without_login() -> None:
    """Local usernames are unique; an account needs a password hash or trusted networks."""
    data = base()
    data["accounts"]["twin"] = dict(data["accounts"]["sales"])
    data["accounts"]["nopw"] = {"username": "n", "mailbox": "n@contoso.com", "credentials": "contoso"}
    found = problems(data)
    assert ("accounts.twin.username", "'erp' is already the username of account 'sales'; local usernames "
            "must be unique") in found
    assert ("accounts.nopw", "needs password_hash (from `relay hash-password`) or "
            "allow_without_auth_from") in found


def test_bad_hash_network_mailbox_and_all_problems_reported_together() -> None:
    """Several problems are all reported in one error."""
    data = base()
    data["accounts"]["sales"].update(password_hash="plain", mailbox="not-an-address",
                                     allow_without_auth_from=["10.0.0.0/33"], envelope_sender="drop")
    paths = [p for p, _ in problems(data)]
    assert paths == ["accounts.sales.password_hash", "accounts.sales.mailbox",
                     "accounts.sales.allow_without_auth_from[0]", "accounts.sales.envelope_sender"]


def test_generic_provider_needs_endpoints_and_upstream_servers() -> None:
    """generic needs token_url/authorize_url and explicit upstream servers."""
    data = base()
    data["credentials"]["gen"] = {"provider": "generic", "client_id": "x"}
    data["accounts"]["sales"]["credentials"] = "gen"
    paths = [p for p, _ in problems(data)]
    assert "credentials.gen.token_url" in paths
    assert "accounts.sales.smtp" in paths and "accounts.sales.pop3" in paths


def test_limits_and_pool_are_validated() -> None:
    """Limits override defaults and must be positive numbers of the right kind."""
    data = base()
    data["limits"] = {"max_message_bytes": 1000, "auth_failure_delay_s": 0.5}
    data["upstream_pool"] = {"enabled": True}
    config = parse_config(data, env={"SECRET": "s"})
    assert config.limits.max_message_bytes == 1000 and config.limits.auth_failure_delay_s == 0.5
    assert config.upstream_pool.enabled
    data["limits"] = {"max_message_bytes": 1.5, "max_connections": 0, "timeout": 1}
    paths = [p for p, _ in problems(data)]
    assert paths == ["limits.timeout", "limits.max_message_bytes", "limits.max_connections"]


def test_relative_paths_resolve_against_the_yaml_file(tmp_path: Path) -> None:
    """token_store.path, cert files and ca_file are relative to the YAML file's directory."""
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "secret.txt").write_text("rel\n")
    data = base()
    data["token_store"]["path"] = "store/tokens.enc"
    data["listen"] = {"smtp": {"tls": "starttls", "cert_file": "c.pem", "key_file": "k.pem",
                               "host": "0.0.0.0", "allow_plaintext_auth_from": ["172.16.0.0/12"]}}
    data["accounts"]["sales"]["smtp"] = {"ca_file": "ca.pem"}
    data["credentials"]["contoso"]["client_secret"] = "${file:secret.txt}"
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path, env={"SECRET": "s"})
    assert config.token_store.path == tmp_path / "store/tokens.enc"
    assert config.listen.smtp.cert_file == tmp_path / "c.pem"
    assert config.accounts["sales"].smtp.ca_file == tmp_path / "ca.pem"
    assert config.accounts["sales"].smtp.host == "smtp.office365.com"  # partial override keeps defaults
    assert config.listen.smtp.allow_plaintext_auth_from == (ipaddress.ip_network("172.16.0.0/12"),)
    assert config.credentials["contoso"].client_secret.reveal() == "rel"
    assert config.source_path == path


def test_missing_ca_file_is_reported() -> None:
    """An upstream ca_file that does not exist is an error at its path."""
    data = base()
    data["accounts"]["sales"]["pop3"] = {"ca_file": "/nonexistent/ca.pem"}
    assert problems(data) == [("accounts.sales.pop3.ca_file", "file /nonexistent/ca.pem does not exist")]


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    """A key given twice in one mapping is an error with its line, not a silent override."""
    path = tmp_path / "dup.yaml"
    path.write_text("accounts:\n  a: {username: x}\n  a: {username: y}\n")
    with pytest.raises(ConfigError, match=r"line 3, column 3: duplicate key 'a'"):
        load_config(path)


def test_unterminated_reference_is_an_error() -> None:
    """A '${' without '}' is reported instead of being passed on literally."""
    data = base()
    data["credentials"]["contoso"]["client_secret"] = "${SECRET"
    [(path, message)] = problems(data)
    assert path == "credentials.contoso.client_secret" and "without a closing" in message


def test_unknown_provider_gives_one_problem_only() -> None:
    """An account on credentials whose provider fails to load gets no extra default-server errors."""
    data = base()
    data["credentials"]["contoso"]["provider"] = "nosuch"
    [(path, message)] = problems(data)
    assert path == "credentials.contoso.provider" and "unknown provider 'nosuch'" in message


def test_zero_failure_delay_is_allowed_but_negative_is_not() -> None:
    """auth_failure_delay_s may be 0 (tests, trusted setups); other limits must be > 0."""
    data = base()
    data["limits"] = {"auth_failure_delay_s": 0}
    assert parse_config(data, env={"SECRET": "s"}).limits.auth_failure_delay_s == 0
    data["limits"] = {"auth_failure_delay_s": -1, "auth_throttle_window_s": 0,
                      "shutdown_grace_s": float("nan")}
    assert problems(data) == [("limits.auth_failure_delay_s", "must be >= 0 (got -1)"),
                              ("limits.auth_throttle_window_s", "must be > 0 (got 0)"),
                              ("limits.shutdown_grace_s", "must be a finite number (got nan)")]


def test_values_expand_from_the_environment_everywhere() -> None:
    """${VAR} works in any string value, also numbers and lists, with os.environ as the default."""
    data = base()
    data["listen"] = {"smtp": {"port": "${PORT}", "allow_plaintext_auth_from": ["${NET}"]}}
    config = parse_config(data, env={"SECRET": "s", "PORT": "2600", "NET": "10.0.0.0/8"})
    assert config.listen.smtp.port == 2600
    assert config.listen.smtp.allow_plaintext_auth_from == (ipaddress.ip_network("10.0.0.0/8"),)


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    """YAML syntax errors give line and column; a missing file is named."""
    path = tmp_path / "bad.yaml"
    path.write_text("accounts:\n  a: [1, 2\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("data", [None, [], "text", {"accounts": {}}, {"accounts": []}])
def test_non_mapping_documents_are_errors(data: object) -> None:
    """Empty or wrongly shaped documents raise ConfigError, never another exception."""
    with pytest.raises(ConfigError):
        parse_config(data, env={})


def test_example_config_in_the_repository_loads(tmp_path: Path) -> None:
    """relay.example.yaml is valid given the variables and secret files it references."""
    text = (REPO / "relay.example.yaml").read_text()
    secret = tmp_path / "app_secret"
    secret.write_text("x\n")
    text = text.replace("/run/secrets/contoso_app_secret", str(secret))
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    env = {"CONTOSO_CLIENT_SECRET": "a", "GMAIL_CLIENT_SECRET": "b", "EXAMPLE_CLIENT_SECRET": "c",
           "SALES_PASSWORD_HASH": HASH, "BOUNCES_PASSWORD_HASH": HASH, "HELPDESK_PASSWORD_HASH": HASH,
           "REPORTS_PASSWORD_HASH": HASH}
    config = load_config(path, env=env)
    assert set(config.accounts) == {"sales", "bounces", "printer", "reports", "ticketing"}
    assert config.accounts["reports"].send_via == "graph"
    assert config.accounts["printer"].password_hash is None


def test_plaintext_upstream_is_refused_unless_loopback() -> None:
    """tls: none to a non-loopback upstream would expose the bearer token and is an error."""
    data = base()
    data["accounts"]["sales"]["smtp"] = {"host": "mail.example.net", "port": 25, "tls": "none"}
    [(path, message)] = problems(data)
    assert path == "accounts.sales.smtp.tls" and "unencrypted" in message
    data["accounts"]["sales"]["smtp"] = {"host": "127.0.0.1", "port": 2525, "tls": "none"}
    assert parse_config(data, env={"SECRET": "s"}).accounts["sales"].smtp.tls == "none"


def test_smtp_pipelining_defaults_on_and_can_be_switched_off_alone() -> None:
    """`smtp.pipelining` is true by default; `smtp: {pipelining: false}` keeps the provider's
    server; it is an SMTP setting, so under pop3 it is an unknown key; it must be a boolean."""
    assert parse_config(base(), env={"SECRET": "s"}).accounts["sales"].smtp.pipelining is True
    data = base()
    data["accounts"]["sales"]["smtp"] = {"pipelining": False}
    smtp = parse_config(data, env={"SECRET": "s"}).accounts["sales"].smtp
    assert (smtp.host, smtp.port, smtp.tls, smtp.pipelining) == ("smtp.office365.com", 587, "starttls", False)
    data = base()
    data["accounts"]["sales"]["pop3"] = {"pipelining": False}
    [(path, message)] = problems(data)
    assert path == "accounts.sales.pop3.pipelining" and message.startswith("unknown key 'pipelining'")
    data = base()
    data["accounts"]["sales"]["smtp"] = {"pipelining": "sometimes"}
    assert [path for path, _ in problems(data)] == ["accounts.sales.smtp.pipelining"]



def test_imap_listener_and_upstreams() -> None:
    """listen.imap is off unless configured; accounts get the provider's IMAP default or `false`."""
    data = base()
    config = parse_config(data, env={"SECRET": "s"})
    assert not config.listen.imap.enabled
    imap = config.accounts["sales"].imap
    assert (imap.host, imap.port, imap.tls) == ("outlook.office365.com", 993, "implicit")
    data["credentials"]["g"] = {"provider": "google", "client_id": "x"}
    data["accounts"]["g"] = {"username": "g", "password_hash": HASH, "mailbox": "g@gmail.com",
                             "credentials": "g", "imap": False}
    data["listen"] = {"imap": {"port": 1993}}
    config = parse_config(data, env={"SECRET": "s"})
    assert (config.listen.imap.enabled, config.listen.imap.host, config.listen.imap.port) == (
        True, "127.0.0.1", 1993)
    assert config.accounts["g"].imap is None
    data["listen"] = {"imap": True}
    assert parse_config(data, env={"SECRET": "s"}).listen.imap.port == 1143


def test_imap_listener_port_clash_is_reported() -> None:
    """An IMAP listener on the SMTP listener's address is reported at listen.imap.port."""
    data = base()
    data["listen"] = {"imap": {"port": 2525}}
    assert [p for p, _ in problems(data)] == ["listen.imap.port"]

@pytest.mark.parametrize("section", [LimitsConfig, PoolConfig], ids=lambda c: c.__name__)
def test_every_number_has_an_upper_bound(section: type) -> None:
    """Each numeric limit refuses 10**23 at its YAML path (it passed check-config and broke listen())."""
    name = "limits" if section is LimitsConfig else "upstream_pool"
    numeric = [k for k, (f, _) in yaml_keys(section).items() if f.type in ("int", "float")]
    assert numeric
    data = base()
    data[name] = dict.fromkeys(numeric, 10**23)
    found = problems(data)
    assert [p for p, _ in found] == [f"{name}.{k}" for k in numeric]
    assert all(m.startswith("must be at most ") and m.endswith("(got 100000000000000000000000)")
               for _, m in found)


def test_max_connections_range_and_float_forms() -> None:
    """max_connections: 1e23 (float) is no whole number; 10**23 is over the cap; the cap itself loads."""
    data = base()
    data["limits"] = {"max_connections": 1e23}
    assert problems(data) == [("limits.max_connections", "must be a whole number (got 1e+23)")]
    data["limits"] = {"max_connections": 10**23}
    assert problems(data) == [("limits.max_connections",
                               "must be at most 1000000 (got 100000000000000000000000)")]
    data["limits"] = {"max_connections": 1_000_000, "shutdown_grace_s": "86400"}
    config = parse_config(data, env={"SECRET": "s"})
    assert (config.limits.max_connections, config.limits.shutdown_grace_s) == (1_000_000, 86400.0)


def test_problems_of_both_phases_come_in_document_order() -> None:
    """Structure problems and meaning problems interleave in the order of the YAML keys."""
    data = base()
    data["accounts"]["sales"].update(credentials="nope", mailbox="bad")
    data["accounts"]["b"] = {"username": "erp", "password_hash": HASH, "mailbox": "b@x.org",
                             "credentials": "contoso", "colour": 1}
    data["listen"] = {"smtp": {"tls": "implicit", "port": "x"}}
    assert [p for p, _ in problems(data)] == [
        "listen.smtp.port", "listen.smtp.cert_file", "listen.smtp.key_file",
        "accounts.sales.mailbox", "accounts.sales.credentials",
        "accounts.b.colour", "accounts.b.username"]


def test_a_key_is_what_is_declared_not_the_field_order() -> None:
    """YAML keys are the fields declared with key(...): not `name`, not the resolved smtp/pop3."""
    assert "name" not in yaml_keys(AccountConfig) and "smtp_written" not in yaml_keys(AccountConfig)
    assert list(yaml_keys(AccountConfig))[:6] == ["username", "password_hash", "mailbox", "credentials",
                                                  "smtp", "pop3"]
    assert "pipelining" in yaml_keys(UpstreamEndpoint, under="smtp")
    assert "pipelining" not in yaml_keys(UpstreamEndpoint, under="pop3")
    assert "source_path" not in yaml_keys(RelayConfig)


def test_sender_proxy_certificate_and_session_cap_settings(tmp_path: Path) -> None:
    """allowed_senders entries, proxy (string or mapping), client_certificate and the session
    caps are checked at their paths; the provider fills the SMTP cap when it is not written."""
    data = base()
    data["accounts"]["sales"]["allowed_senders"] = ["sales@contoso.com", "*@contoso.com", "<>", "bad*"]
    data["credentials"]["contoso"]["proxy"] = "http://user:pw@proxy.local:3128"
    data["credentials"]["other"] = {"provider": "microsoft", "client_id": "y", "tenant_id": "t",
                                    "proxy": {"url": "http://proxy.local:3128", "password": "p"},
                                    "client_certificate": {"cert_file": str(tmp_path / "nope.pem")}}
    found = problems(data)
    assert [p for p, _ in found] == [
        "credentials.contoso.proxy.url",
        "credentials.other.client_certificate.key_file", "credentials.other.proxy.username",
        "accounts.sales.allowed_senders[3]"]
    assert found[0][1].startswith("must not contain credentials")
    data = base()
    data["credentials"]["contoso"]["proxy"] = "http://proxy.local:3128"
    data["accounts"]["sales"].update(allowed_senders=["*@contoso.com"], max_upstream_pop3_sessions=0)
    config = parse_config(data, env={"SECRET": "s"})
    assert config.credentials["contoso"].proxy.url == "http://proxy.local:3128"
    account = config.accounts["sales"]
    assert (account.allowed_senders, account.max_upstream_sessions, account.max_upstream_pop3_sessions) == (
        ("*@contoso.com",), 3, 0)
    data["accounts"]["sales"]["max_upstream_sessions"] = 10**6
    assert [p for p, _ in problems(data)] == ["accounts.sales.max_upstream_sessions"]


def test_redis_token_store_settings() -> None:
    """backend: redis needs a redis/valkey URL (valkey:// is taken as redis://); lease_ttl_s has a range."""
    data = base()
    data["token_store"] = {"key_env": "K", "backend": "redis", "url": "valkey://127.0.0.1:6379/0",
                           "password": "${SECRET}"}
    store = parse_config(data, env={"SECRET": "s"}).token_store
    assert (store.backend, store.url, store.key_prefix, store.password.reveal()) == (
        "redis", "redis://127.0.0.1:6379/0", "xoauth2-relay:", "s")
    data["token_store"] = {"key_env": "K", "backend": "redis", "lease_ttl_s": 10**9}
    assert [p for p, _ in problems(data)] == ["token_store.url", "token_store.lease_ttl_s"]
    data["token_store"] = {"key_env": "K", "url": "http://x"}
    assert problems(data) == [("token_store.url", "must start with redis://, rediss:// or unix://")]

"""Unit-level fuzzing of the configuration loader: any YAML-shaped data gives a config or ConfigError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.configuration import parse_config
from relay.errors import ConfigError

FUZZ = settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_keys = st.sampled_from(["listen", "smtp", "pop3", "host", "port", "tls", "enabled", "token_store", "path",
                         "key_env", "credentials", "accounts", "provider", "client_id", "username",
                         "mailbox", "password_hash", "limits", "max_connections", "upstream_pool",
                         "allow_plaintext_auth_from", "x", "${ENV}", "${file:/nonexistent}"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.just(float("nan")),
                     st.sampled_from(["127.0.0.1", "none", "starttls", "generic", "", "\x00",
                                      "${NOPE}", "${file:/etc/hostname}", "10.0.0.0/8",
                                      "${file:/dev/zero}", "${file:/}", "1e23"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(_keys, inner, max_size=4)),
                       max_leaves=6)


@FUZZ
@given(st.one_of(st.dictionaries(_keys, _values, max_size=4), _values))
def test_parse_config_raises_only_config_errors(data: object) -> None:
    """Arbitrary nested data (wrong types, env refs, bad addresses): a config or ConfigError."""
    try:
        parse_config(data, env={})  # type: ignore[arg-type]
    except ConfigError as exc:
        assert exc.problems

"""Unit-level fuzzing of the configuration loader: any YAML-shaped data gives a config or ConfigError.

Example counts and the per-example deadline come from the hypothesis profile (tests/conftest.py);
@example pins inputs that once broke a parser, so every run tries them.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from relay.configuration import parse_config
from relay.errors import ConfigError

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


@given(st.one_of(st.dictionaries(_keys, _values, max_size=4), _values))
@example({"limits": {"max_connections": 10**23}})  # an unbounded number once passed the loader
@example({"limits": {"max_connections": float("nan")}, "listen": {"smtp": {"port": "1e23"}}})
@example({"token_store": {"path": "${file:/dev/zero}"}, "credentials": {"x": "${file:/}"}})
@example({"accounts": {"x": {"username": "\x00", "mailbox": "${NOPE}", "credentials": None}}})
def test_parse_config_raises_only_config_errors(data: object) -> None:
    """Arbitrary nested data (wrong types, env refs, bad addresses): a config or ConfigError."""
    try:
        parse_config(data, env={})  # type: ignore[arg-type]
    except ConfigError as exc:
        assert exc.problems

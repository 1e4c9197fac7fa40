"""TokenSet: JSON round trip, validity checks, no secret in repr."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.errors import TokenStoreError
from relay.secret import Secret
from relay.tokens.model import TokenSet

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def sample(**kw: object) -> TokenSet:
    """A TokenSet expiring in one hour."""
    base: dict[str, object] = {"account": "sales", "credentials": "c", "access_token": Secret("AT"),
                               "expires_at": NOW + timedelta(hours=1), "refresh_token": Secret("RT"),
                               "obtained_at": NOW}
    base.update(kw)
    return TokenSet(**base)  # type: ignore[arg-type]


def test_json_round_trip():
    """to_json/from_json preserve every field including the status."""
    ts = sample(needs_authorization=True, last_error="run `relay authorize sales`", scopes=("x",))
    assert TokenSet.from_json(ts.to_json()) == ts


def test_repr_hides_tokens():
    """repr of a TokenSet shows no token."""
    assert "AT" not in repr(sample()).replace("AT(", "") and "'RT'" not in repr(sample())


def test_usable_respects_margin_and_mark():
    """A token is usable only with more than the margin left and when not marked."""
    ts = sample()
    assert ts.is_usable(NOW, 300)
    assert not ts.is_usable(NOW + timedelta(minutes=56), 300)
    assert not ts.marked("x", needs_authorization=True).is_usable(NOW, 0)


def test_malformed_entry_is_a_store_error():
    """A stored entry lacking fields raises TokenStoreError naming the account."""
    with pytest.raises(TokenStoreError, match="account 'sales'"):
        TokenSet.from_json({"account": "sales"})

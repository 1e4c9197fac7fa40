"""Unit tests for local password hashes (relay.passwords)."""

from __future__ import annotations

import pytest

from relay.passwords import hash_password, parse_hash, verify_password


def test_round_trip_and_rejection() -> None:
    """A hash verifies its own password and rejects others; salts differ per hash."""
    encoded = hash_password("correct horse", log2_n=4)
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)
    assert not verify_password("", encoded)
    assert hash_password("correct horse", log2_n=4) != encoded


def test_default_cost_is_memory_hard_scrypt() -> None:
    """The default hash is scrypt with N=2^14, r=8, p=1."""
    parsed = parse_hash(hash_password("x"))
    assert (parsed.log2_n, parsed.r, parsed.p) == (14, 8, 1)
    assert len(parsed.salt) == 16 and len(parsed.digest) == 32


@pytest.mark.parametrize("encoded", ["", "plain", "scrypt$ln=14$a$b", "bcrypt$ln=4,r=8,p=1$AAAA$AAAA",
                                     "scrypt$ln=99,r=8,p=1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",
                                     "scrypt$ln=4,r=8,p=1$!!!$AAAA", "scrypt$ln=x,r=8,p=1$AAAA$AAAA"])
def test_malformed_hashes_are_rejected(encoded: str) -> None:
    """Malformed hashes raise ValueError in parse_hash and never verify."""
    with pytest.raises(ValueError):
        parse_hash(encoded)
    assert not verify_password("anything", encoded)


def test_empty_password_cannot_be_hashed() -> None:
    """Empty passwords are refused."""
    with pytest.raises(ValueError):
        hash_password("")

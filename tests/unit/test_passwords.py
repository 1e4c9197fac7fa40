"""Unit tests for local password hashes (relay.passwords)."""

from __future__ import annotations

import pytest

from relay.passwords import dummy_hash, hash_password, parse_hash, verify_password


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


@pytest.mark.parametrize(("ln", "r", "p"), [(4, 8, 1), (10, 4, 2), (15, 8, 1)])
def test_other_cost_variants_verify(ln: int, r: int, p: int) -> None:
    """Hashes with other scrypt costs in the string parse and verify."""
    encoded = hash_password("pw", log2_n=ln, r=r, p=p)
    assert encoded.startswith(f"scrypt$ln={ln},r={r},p={p}$")
    assert verify_password("pw", encoded) and not verify_password("pW", encoded)


def test_memory_hungry_parameters_are_refused() -> None:
    """A hash asking scrypt for more than 256 MiB is rejected instead of exhausting memory."""
    with pytest.raises(ValueError, match="256 MiB"):
        parse_hash("scrypt$ln=20,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==")


def test_dummy_hash_copies_the_cost_and_matches_nothing() -> None:
    """dummy_hash has the cost of the hash it imitates and fresh random bytes each time."""
    like = hash_password("pw", log2_n=5, r=4, p=1)
    first, second = dummy_hash(like), dummy_hash(like)
    parsed, model = parse_hash(first), parse_hash(like)
    assert (parsed.log2_n, parsed.r, parsed.p, len(parsed.digest)) == (5, 4, 1, len(model.digest))
    assert first != second and not verify_password("pw", first)
    assert parse_hash(dummy_hash(None)).log2_n == 14
    assert parse_hash(dummy_hash("garbage")).log2_n == 14

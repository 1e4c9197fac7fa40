"""Local password hashes: scrypt (memory-hard, from the standard library), verified in constant time.

Format: ``scrypt$ln=14,r=8,p=1$<base64 salt>$<base64 hash>``. Cost ln=14 (N=16384, 16 MiB) took
27 ms per verification on the 2-core machine this project is measured on (ln=13: 12 ms, ln=15:
61 ms): slow enough to make guessing expensive, fast enough for a login, and the local
authenticator caches successful verifications so no message ever pays it twice. Other costs
(ln 1..20, r 1..32, p 1..16, at most 256 MiB of memory) are accepted in the string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

DEFAULT_LOG2_N = 14
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_MAX_LOG2_N = 20
_MAX_MEMORY = 256 * 1024 * 1024  # scrypt needs 128 * r * N bytes
_PREFIX = "scrypt"


@dataclass(frozen=True)
class ScryptHash:
    """A parsed password hash."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _kdf(password: str, params: ScryptHash) -> bytes:
    """Run scrypt with the parameters (and salt, output length) of ``params``."""
    n = 1 << params.log2_n
    maxmem = 128 * params.r * n * 2 + 1024 * 1024
    return hashlib.scrypt(password.encode("utf-8"), salt=params.salt, n=n, r=params.r, p=params.p,
                          maxmem=maxmem, dklen=len(params.digest))


def hash_password(password: str, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R,
                  p: int = DEFAULT_P) -> str:
    """Return a new salted scrypt hash string for ``password``."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = os.urandom(SALT_BYTES)
    digest = _kdf(password, ScryptHash(log2_n, r, p, salt, bytes(HASH_BYTES)))
    b64 = base64.b64encode
    return f"{_PREFIX}$ln={log2_n},r={r},p={p}${b64(salt).decode()}${b64(digest).decode()}"


def parse_hash(encoded: str) -> ScryptHash:
    """Parse a hash string; raise ValueError saying what is wrong (used by the config loader)."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != _PREFIX:
        raise ValueError("not a password hash from `relay hash-password` "
                         "(expected scrypt$ln=..,r=..,p=..$SALT$HASH)")
    try:
        params = dict(item.split("=", 1) for item in parts[1].split(","))
        log2_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
    except (ValueError, KeyError):
        raise ValueError("password hash parameters must be ln=N,r=N,p=N") from None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError(f"password hash parameters out of range (ln 1..{_MAX_LOG2_N}, r 1..32, p 1..16)")
    if 128 * r * (1 << log2_n) > _MAX_MEMORY:
        raise ValueError("password hash parameters need more than 256 MiB of memory (lower ln or r)")
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("password hash salt/hash are not valid base64") from None
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("password hash salt or hash is too short")
    return ScryptHash(log2_n=log2_n, r=r, p=p, salt=salt, digest=digest)


def dummy_hash(like: str | None = None) -> str:
    """Return a well-formed hash that no password matches, with the cost of ``like`` if it parses.

    Checking an unknown username against it costs the same as checking a real account.
    """
    try:
        params = parse_hash(like) if like else None
    except ValueError:
        params = None
    log2_n, r, p = (params.log2_n, params.r, params.p) if params else (DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P)
    size = len(params.digest) if params else HASH_BYTES
    b64 = base64.b64encode
    return (f"{_PREFIX}$ln={log2_n},r={r},p={p}${b64(os.urandom(SALT_BYTES)).decode()}"
            f"${b64(os.urandom(size)).decode()}")


def verify_password(password: str, encoded: str) -> bool:
    """Return True when ``password`` matches ``encoded``; constant-time comparison."""
    try:
        parsed = parse_hash(encoded)
    except ValueError:
        return False
    candidate = _kdf(password, parsed)
    return hmac.compare_digest(candidate, parsed.digest)

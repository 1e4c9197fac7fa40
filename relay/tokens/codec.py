"""AES-256-GCM sealing of token records, shared by the file and the Redis store.

A sealed blob is ``MAGIC(7) VERSION(1) NONCE(12) CIPHERTEXT+TAG``; the header and a context
string (which file, which Redis key) are bound as associated data, so a blob moved to another
place or written with another key is refused. Every seal uses a fresh random nonce.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.errors import TokenStoreError
from relay.tokens.model import TokenSet

MAGIC = b"XO2RTOK"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
FILE_CONTEXT = b"xoauth2-relay token store"
NONCE_BYTES = 12
TAG_BYTES = 16


@dataclass(frozen=True)
class Payload:
    """The decrypted content of the file store: tokens and per-account versions."""

    accounts: Mapping[str, TokenSet]
    versions: Mapping[str, int]


def seal(key: bytes, plain: bytes, context: bytes) -> bytes:
    """Encrypt ``plain`` with a fresh nonce, binding the header and ``context``."""
    nonce = os.urandom(NONCE_BYTES)
    return HEADER + nonce + AESGCM(key).encrypt(nonce, plain, HEADER + b"|" + context)


def unseal(key: bytes, blob: bytes, context: bytes, where: str, fix: str) -> bytes:
    """Decrypt a sealed blob; TokenStoreError saying what is wrong with ``where`` and ``fix``."""
    if len(blob) < len(HEADER):
        raise TokenStoreError(f"the token store {where} is truncated ({len(blob)} bytes); {fix}")
    if not blob.startswith(MAGIC):
        raise TokenStoreError(f"{where} is not an xoauth2-relay token store (bad header); check the "
                              "token_store settings")
    if blob[len(MAGIC)] != VERSION:
        raise TokenStoreError(f"the token store {where} has format version {blob[len(MAGIC)]}, this relay "
                              f"reads version {VERSION}; upgrade the relay")
    if len(blob) < len(HEADER) + NONCE_BYTES + TAG_BYTES:
        raise TokenStoreError(f"the token store {where} is truncated; {fix}")
    nonce = blob[len(HEADER):len(HEADER) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(HEADER) + NONCE_BYTES:], HEADER + b"|" + context)
    except InvalidTag:
        raise TokenStoreError(
            f"the token store {where} cannot be decrypted: the key is wrong, or the data was modified or "
            "truncated. Use the key it was written with (token_store.key_env / key_file); if that key is "
            f"lost, {fix}") from None


def parse_json(plain: bytes, where: str, fix: str) -> object:
    """Parse decrypted JSON; hostile nesting or numbers become a TokenStoreError, never a crash."""
    try:
        return json.loads(plain.decode("utf-8"))
    except (ValueError, RecursionError, OverflowError, MemoryError):
        raise TokenStoreError(f"the token store {where} decrypted but its content is malformed; "
                              f"{fix}") from None


def token_set(entry: object, where: str, fix: str) -> TokenSet:
    """Build a TokenSet from a decrypted entry; any malformed field is a TokenStoreError."""
    try:
        return TokenSet.from_json(entry)
    except TokenStoreError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
        raise TokenStoreError(f"the token store {where} decrypted but a record is malformed; "
                              f"{fix}") from None


FILE_FIX = "restore it from a backup, or move it away and run `relay authorize` for each account"


def encrypt_payload(key: bytes, accounts: Mapping[str, TokenSet],
                    versions: Mapping[str, int] | None = None) -> bytes:
    """Return the file bytes for ``accounts`` (with their versions; fresh nonce)."""
    data = {"accounts": {k: v.to_json() for k, v in accounts.items()},
            "versions": dict(versions if versions is not None else dict.fromkeys(accounts, 1))}
    return seal(key, json.dumps(data).encode(), FILE_CONTEXT)


def decrypt_file(key: bytes, blob: bytes, where: str) -> Payload:
    """Parse file bytes into tokens and versions; TokenStoreError on any problem."""
    plain = unseal(key, blob, FILE_CONTEXT, where, FILE_FIX)
    data = parse_json(plain, where, FILE_FIX)
    try:
        top = _mapping(data)
        entries = _mapping(top["accounts"])
        accounts = {str(name): token_set(entry, where, FILE_FIX) for name, entry in entries.items()}
        versions = {str(k): _version(v) for k, v in _mapping(top.get("versions") or {}).items()}
    except (KeyError, TypeError, ValueError):
        raise TokenStoreError(f"the token store {where} decrypted but its content is malformed; "
                              f"{FILE_FIX}") from None
    for name in accounts:
        versions.setdefault(name, 1)  # a file written before versions existed
    return Payload(accounts, versions)


def decrypt_payload(key: bytes, blob: bytes, where: object) -> dict[str, TokenSet]:
    """Parse file bytes into the stored TokenSets (without versions)."""
    return dict(decrypt_file(key, blob, str(where)).accounts)


def _mapping(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


def _version(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise ValueError("bad version")
    return value

"""Pure SASL helpers: XOAUTH2 / OAUTHBEARER encoding, PLAIN / LOGIN decoding.

No I/O here. Everything that builds or parses a SASL string refuses the bytes that would corrupt
it or smuggle extra protocol (CR, LF, NUL, ^A), see PROTOCOLS.md section 1.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from relay.errors import ProtocolInputError

FORBIDDEN_CHARS = frozenset("\r\n\x00\x01")
"""Characters never allowed in a username, password, mailbox or token."""


def check_safe(value: str, what: str) -> str:
    """Return ``value`` unchanged, or raise ProtocolInputError if it holds CR, LF, NUL or ^A."""
    if any(ch in FORBIDDEN_CHARS for ch in value):
        raise ProtocolInputError(f"{what} contains a forbidden control character (CR, LF, NUL or ^A)")
    return value


def b64decode_strict(data: str | bytes, what: str = "SASL response") -> bytes:
    """Decode standard, padded base64, raising ProtocolInputError on anything else."""
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise ProtocolInputError(f"{what} is not valid base64") from None
    data = data.strip()
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolInputError(f"{what} is not valid base64") from None


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolInputError(f"{what} is not valid UTF-8") from None


# --- XOAUTH2 -------------------------------------------------------------------------------------

def xoauth2_raw(user: str, access_token: str) -> bytes:
    """Return the unencoded XOAUTH2 client response ``user=U^Aauth=Bearer T^A^A``."""
    check_safe(user, "mailbox address")
    check_safe(access_token, "access token")
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01".encode()


def encode_xoauth2(user: str, access_token: str) -> str:
    """Return the base64 XOAUTH2 client response for ``user`` and ``access_token``."""
    return base64.b64encode(xoauth2_raw(user, access_token)).decode("ascii")


@dataclass(frozen=True)
class BearerCredentials:
    """The user and bearer token carried by an XOAUTH2 or OAUTHBEARER response."""

    user: str
    token: str


def decode_xoauth2(b64: str | bytes) -> BearerCredentials:
    """Parse a base64 XOAUTH2 client response (server side, used by the sandbox upstream)."""
    text = _utf8(b64decode_strict(b64, "XOAUTH2 response"), "XOAUTH2 response")
    if not text.endswith("\x01\x01"):
        raise ProtocolInputError("XOAUTH2 response must end with ^A^A")
    fields = text[:-2].split("\x01")
    user = token = None
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep:
            raise ProtocolInputError("XOAUTH2 response has a field without '='")
        if key == "user":
            user = value
        elif key == "auth":
            scheme, _, token_value = value.partition(" ")
            if scheme.lower() != "bearer" or not token_value:
                raise ProtocolInputError("XOAUTH2 auth field must be 'Bearer <token>'")
            token = token_value
    if not user or not token:
        raise ProtocolInputError("XOAUTH2 response lacks user= or auth=")
    return BearerCredentials(user=user, token=token)


def encode_oauthbearer(user: str, host: str, port: int, access_token: str) -> str:
    """Return the base64 OAUTHBEARER (RFC 7628) client response."""
    check_safe(user, "mailbox address")
    check_safe(host, "host")
    check_safe(access_token, "access token")
    if "," in user or "=" in user:
        # RFC 7628 / RFC 5801 saslname escaping: ',' -> =2C, '=' -> =3D
        user = user.replace("=", "=3D").replace(",", "=2C")
    raw = f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {access_token}\x01\x01"
    return base64.b64encode(raw.encode()).decode("ascii")


def decode_oauthbearer(b64: str | bytes) -> BearerCredentials:
    """Parse a base64 OAUTHBEARER client response (server side)."""
    text = _utf8(b64decode_strict(b64, "OAUTHBEARER response"), "OAUTHBEARER response")
    gs2, sep, rest = text.partition("\x01")
    if not sep or not gs2.startswith(("n,", "y,")):
        raise ProtocolInputError("OAUTHBEARER response has no valid GS2 header")
    user = ""
    for part in gs2.split(",")[1:]:
        if part.startswith("a="):
            user = part[2:].replace("=2C", ",").replace("=3D", "=")
    token = None
    for item in rest.split("\x01"):
        if item.startswith("auth="):
            scheme, _, token_value = item[5:].partition(" ")
            if scheme.lower() == "bearer" and token_value:
                token = token_value
    if not token:
        raise ProtocolInputError("OAUTHBEARER response lacks auth=Bearer")
    return BearerCredentials(user=user, token=token)


def decode_error_challenge(challenge: str) -> dict[str, object] | None:
    """Decode the base64 JSON error a server sends as a 334/+ challenge after a bad XOAUTH2 token.

    Returns None when the challenge is not base64 JSON (then it is not an error status).
    """
    try:
        raw = base64.b64decode(challenge.strip(), validate=True)
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def encode_error_challenge(status: str = "401", schemes: str = "bearer", scope: str = "mail") -> str:
    """Build the base64 JSON error challenge a server sends for a bad token (sandbox side)."""
    payload = json.dumps({"status": status, "schemes": schemes, "scope": scope},
                         separators=(",", ":"))
    return base64.b64encode(payload.encode()).decode("ascii")


# --- PLAIN / LOGIN -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlainCredentials:
    """A decoded AUTH PLAIN / USER+PASS login. ``password`` is never logged by callers."""

    authzid: str
    username: str
    password: str


def decode_plain(b64: str | bytes) -> PlainCredentials:
    """Decode an AUTH PLAIN response ``authzid NUL authcid NUL passwd`` (RFC 4616)."""
    raw = b64decode_strict(b64, "AUTH PLAIN response")
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        raise ProtocolInputError("AUTH PLAIN response must be authzid NUL username NUL password")
    authzid, username, password = (_utf8(p, "AUTH PLAIN response") for p in parts)
    if not username:
        raise ProtocolInputError("AUTH PLAIN response has an empty username")
    return PlainCredentials(
        authzid=check_safe(authzid, "authorization identity"),
        username=check_safe(username, "username"),
        password=check_safe(password, "password"),
    )


def encode_plain(username: str, password: str, authzid: str = "") -> str:
    """Encode an AUTH PLAIN response (client side, used by tests and `send-test`)."""
    raw = f"{authzid}\x00{username}\x00{password}".encode()
    return base64.b64encode(raw).decode("ascii")


def decode_login_field(b64: str | bytes, what: str) -> str:
    """Decode one AUTH LOGIN step (the username or the password)."""
    return check_safe(_utf8(b64decode_strict(b64, f"AUTH LOGIN {what}"), f"AUTH LOGIN {what}"), what)

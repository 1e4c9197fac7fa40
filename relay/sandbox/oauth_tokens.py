"""Access tokens of the sandbox provider as JWTs with Microsoft's claims (like Entra v1 tokens for
Exchange Online), so `relay check` can read them exactly as it reads real ones.

Delegated: ``aud`` = the resource of the requested scopes (``https://outlook.office.com``), ``scp``
= the scope names, ``upn``/``unique_name`` = the signed-in user, ``oid``, ``tid``, ``appid``.
App-only: ``roles`` = the application permissions granted (``SMTP.SendAsApp``, ...), ``oid`` = the
service principal (enterprise application) object id, ``idtyp`` = ``app``. Signed RS256 with a
sandbox key (nobody verifies it: Exchange does, the relay only reads the claims).
"""

from __future__ import annotations

import json
import secrets
import uuid
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.sandbox.oauth_jwt import b64url_encode

DEFAULT_TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT_AUDIENCE = "https://outlook.office.com"
DEFAULT_APP_ROLES = ("SMTP.SendAsApp", "POP.AccessAsApp", "IMAP.AccessAsApp")
NOT_SCOPES = frozenset({"offline_access", "openid", "profile", "email"})
_NAMESPACE = uuid.UUID("9a1c0d52-7a43-4f0e-8d1f-5b8a1c2e3d4f")


@lru_cache(maxsize=1)
def _signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def verification_key() -> rsa.RSAPublicKey:
    """The public key the sandbox's access tokens verify with (for tests using an independent
    JWT library)."""
    return _signing_key().public_key()


def object_id(name: str) -> str:
    """A stable object id (GUID) for a user or app name."""
    return str(uuid.uuid5(_NAMESPACE, name.lower()))


def split_scope(scope: str) -> tuple[str, list[str]]:
    """(audience, scope names) of a requested scope string: ``https://outlook.office.com/SMTP.Send
    offline_access`` -> (``https://outlook.office.com``, [``SMTP.Send``])."""
    audience = DEFAULT_AUDIENCE
    names: list[str] = []
    for item in scope.split():
        if item in NOT_SCOPES:
            continue
        if "://" in item:
            resource, _, name = item.rpartition("/")
            audience = resource
            if name != ".default":
                names.append(name)
        else:
            names.append(item)
    return audience, names


def microsoft_claims(*, user: str | None, client_id: str, scope: str, issued_at: float, expires_at: float,
                     tenant_id: str = DEFAULT_TENANT_ID,
                     app_roles: tuple[str, ...] = DEFAULT_APP_ROLES) -> dict[str, object]:
    """The claims Entra puts into an Exchange Online access token (delegated or app-only)."""
    audience, names = split_scope(scope)
    claims: dict[str, object] = {
        "aud": audience, "iss": f"https://sts.windows.net/{tenant_id}/", "iat": int(issued_at),
        "nbf": int(issued_at), "exp": int(expires_at), "appid": client_id, "tid": tenant_id,
        "ver": "1.0", "uti": secrets.token_urlsafe(16), "app_displayname": "relay sandbox app",
    }
    if user is None:
        claims.update({"roles": list(app_roles), "oid": object_id(f"sp:{client_id}"), "idtyp": "app",
                       "sub": object_id(f"sp:{client_id}")})
    else:
        claims.update({"scp": " ".join(names), "upn": user, "unique_name": user, "name": user.split("@")[0],
                       "oid": object_id(user), "sub": object_id(f"sub:{user}"), "idtyp": "user",
                       "amr": ["pwd"]})
    return claims


def mint_jwt(claims: dict[str, object], min_length: int = 0) -> str:
    """Sign ``claims`` (RS256); pad with an opaque ``aio`` claim (as Entra's) to ``min_length``."""
    claims = dict(claims)
    claims["aio"] = ""
    base = _encode(claims)
    missing = max(0, min_length - len(base))
    claims["aio"] = secrets.token_urlsafe(missing * 3 // 4 + 8)[: max(8, missing * 3 // 4)]
    return _encode(claims)


def _encode(claims: dict[str, object]) -> str:
    header = {"typ": "JWT", "alg": "RS256", "kid": "sandbox-key-1"}
    signing_input = (f"{b64url_encode(json.dumps(header, separators=(',', ':')).encode())}."
                     f"{b64url_encode(json.dumps(claims, separators=(',', ':')).encode())}")
    signature = _signing_key().sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url_encode(signature)}"

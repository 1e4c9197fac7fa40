"""Operator-facing errors for the Redis/Valkey token store: each names the setting to fix."""

from __future__ import annotations

import urllib.parse

from relay.errors import TokenStoreError


def describe_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs and errors)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def translate(exc: BaseException, where: str, *, password_set: bool = False) -> TokenStoreError | None:
    """Map a redis-py or OS error to a TokenStoreError naming the setting; None if not ours."""
    from redis import exceptions as rex  # noqa: PLC0415 - only loaded with this backend

    text = str(exc)
    if isinstance(exc, rex.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        if not password_set or "NOAUTH" in text:
            return TokenStoreError(f"token_store.password: the Redis server at {where} requires a password; "
                                   "set token_store.password (e.g. ${file:/run/secrets/redis-password})")
        return TokenStoreError(f"token_store.password: the Redis server at {where} refused the password "
                               "(or the user in token_store.url); check both")
    if isinstance(exc, rex.AuthorizationError) or "NOPERM" in text:
        return TokenStoreError(f"token_store.url: the Redis user at {where} may not run the commands the "
                               f"relay needs (GET/SET/HSET/EVAL/PUBLISH/SUBSCRIBE/SCAN): {text}")
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError | TimeoutError):
        reason = text or type(exc).__name__
        return TokenStoreError(f"token_store.url: cannot reach Redis at {where} ({reason}); "
                               "check that the server runs and the URL (host, port, TLS)")
    if isinstance(exc, rex.ResponseError):
        return TokenStoreError(f"token_store.url: Redis at {where} answered an error: {text}")
    if isinstance(exc, rex.RedisError):
        return TokenStoreError(f"token_store.url: Redis at {where} failed: {text}")
    return None

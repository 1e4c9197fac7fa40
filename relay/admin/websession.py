"""Browser sessions of the admin page: login with the admin token, HttpOnly cookie, CSRF tokens.

A session id is 256 random bits kept only in memory (a restart logs everyone out); each session
has its own CSRF token, compared in constant time on every POST. Failed logins are delayed like the
mail listeners' (``limits.auth_failure_delay_s``, doubled per failure from the same client, capped).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "relay_admin"
SESSION_TTL_S = 8 * 3600.0
MAX_SESSIONS = 64
MAX_DELAY_S = 10.0


@dataclass
class WebSession:
    """One logged-in browser."""

    sid: str
    csrf: str
    expires: float
    flash: list[str] = field(default_factory=list)


class WebSessions:
    """The logged-in browsers and the failed-login bookkeeping."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock if callable(clock) else time.monotonic
        self._sessions: dict[str, WebSession] = {}
        self._failures: dict[str, int] = {}

    def create(self) -> WebSession:
        """A new session (the oldest is dropped beyond MAX_SESSIONS)."""
        now = float(self._clock())
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        session = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + SESSION_TTL_S)
        self._sessions[session.sid] = session
        return session

    def get(self, cookie_header: str | None) -> WebSession | None:
        """The live session named by the request's Cookie header, if any."""
        sid = cookie_value(cookie_header, COOKIE)
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None or session.expires <= float(self._clock()):
            return None
        return session

    def end(self, session: WebSession) -> None:
        """Log out."""
        self._sessions.pop(session.sid, None)

    def failure_delay_s(self, client_ip: str, base_s: float) -> float:
        """Record a failed login from ``client_ip``; how long to wait before answering."""
        count = self._failures.get(client_ip, 0) + 1
        if len(self._failures) > 4096:
            self._failures.clear()
        self._failures[client_ip] = count
        return float(min(MAX_DELAY_S, base_s * (2 ** min(count - 1, 8))))

    def succeeded(self, client_ip: str) -> None:
        """Forget the failures of a client that logged in."""
        self._failures.pop(client_ip, None)


def csrf_ok(session: WebSession, given: str | None) -> bool:
    """True when ``given`` is the session's CSRF token."""
    expected = session.csrf.encode()
    return bool(given) and hmac.compare_digest(expected, (given or "").encode("utf-8", "replace"))


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (pure)."""
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def session_cookie(session: WebSession | None, *, secure: bool = False) -> str:
    """The Set-Cookie value that stores (or, with None, clears) the session cookie."""
    flags = "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    if session is None:
        return f"{COOKIE}=; Max-Age=0{flags}"
    return f"{COOKIE}={session.sid}; Max-Age={int(SESSION_TTL_S)}{flags}"


def bearer_ok(header: str | None, token: str) -> bool:
    """True when ``header`` is ``Bearer <token>`` (scheme case-insensitive, constant-time compare)."""
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))

"""The values the pre-login IMAP state machine (`relay.imap.protocol`) hands to its server."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.secret import Secret


class State(enum.Enum):
    """Where the client is: before login, logged in (relay takes over), or gone."""

    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    AUTHENTICATED = "AUTHENTICATED"
    CLOSED = "CLOSED"


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # a LoginAttempt or StartTls awaits the server's decision


NEED_DATA = _Sentinel.NEED_DATA
PAUSED = _Sentinel.PAUSED


@dataclass(frozen=True)
class Reply:
    """Bytes the relay answers by itself; close the connection after sending when ``close``."""

    data: bytes
    close: bool = False


@dataclass(frozen=True)
class LoginAttempt:
    """A local login (LOGIN or AUTHENTICATE PLAIN) to check; the protocol pauses until decided.

    The server answers with a reply tagged ``tag``."""

    tag: bytes
    username: str
    password: Secret
    mechanism: str  # "LOGIN" or "PLAIN"


@dataclass(frozen=True)
class StartTls:
    """Send ``reply``, then run the TLS handshake and call :meth:`ImapProtocol.tls_started`."""

    reply: bytes


Event = Reply | LoginAttempt | StartTls | _Sentinel

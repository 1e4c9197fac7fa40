"""The values the pre-login IMAP state machine (`relay.imap.protocol`) hands to its server.

NEED_DATA, PAUSED, `Reply` and `StartTls` are the ones every line-protocol core shares
(`relay.lineproto.events`); the IMAP login attempt carries the command's tag.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.lineproto.events import NEED_DATA, PAUSED, Reply, Signal, StartTls
from relay.secret import Secret

__all__ = ["NEED_DATA", "PAUSED", "Event", "LoginAttempt", "Reply", "StartTls", "State"]


class State(enum.Enum):
    """Where the client is: before login, logged in (relay takes over), or gone."""

    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    AUTHENTICATED = "AUTHENTICATED"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class LoginAttempt:
    """A local login (LOGIN or AUTHENTICATE PLAIN) to check; the protocol pauses until decided.

    The server answers with a reply tagged ``tag``."""

    tag: bytes
    username: str
    password: Secret
    mechanism: str  # "LOGIN" or "PLAIN"


Event = Reply | LoginAttempt | StartTls | Signal

"""The values a pure line-protocol core (relay.pop3.protocol, relay.imap.protocol) hands to its
session, and the interface the session drives it through (`LineCore`). Nothing here does I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from relay.secret import Secret


class Signal(enum.Enum):
    """What `LineCore.next_event` returns when it has no event."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # a login attempt or StartTls awaits the session's decision


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


@dataclass(frozen=True)
class Reply:
    """Bytes the relay answers by itself; close the connection after sending when ``close``."""

    data: bytes
    close: bool = False


@dataclass(frozen=True)
class StartTls:
    """Send ``reply``, then run the TLS handshake and call the core's ``tls_started``."""

    reply: bytes


class Credentials(Protocol):
    """What a login attempt event carries (POP3 and IMAP have their own event classes)."""

    @property
    def username(self) -> str: ...

    @property
    def password(self) -> Secret: ...


class LineCore(Protocol):
    """The pure state machine a `relay.lineproto.session.LineSession` feeds (h11 style)."""

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client."""

    def next_event(self) -> object:
        """The next event (`Reply`, `StartTls`, a login attempt ...), or NEED_DATA / PAUSED."""

    def login_succeeded(self) -> None:
        """The pending login attempt worked (local and upstream)."""

    def login_failed(self) -> None:
        """The pending login attempt was refused (the session sent the refusal)."""

    def tls_started(self, *, plaintext_allowed: bool) -> None:
        """The TLS handshake after StartTls completed."""

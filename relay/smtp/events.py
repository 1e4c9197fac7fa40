"""The vocabulary of the SMTP transaction core (`relay.smtp.transaction`): the values it is
given, the commands it emits and the outcomes of those commands that are fed back.

Commands that need no answer (`Drop`, `Release`, `Quit`) are done at once; a request (`Acquire`,
`SendMail`, `SendRcpt`, `SendRset`) is answered with an `Outcome`; `Answer` carries the client's
reply and ends the step; `StartContent` hands the content to a sink, which reports a
`ContentResult` at its end.

They are values (never changed after construction) but not ``frozen``: a frozen dataclass's
``__init__`` goes through ``object.__setattr__`` per field, twice the cost, and several of these
are made per SMTP command on the relay's hottest path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from relay.smtp.reply import EhloCapabilities, SmtpReply


@dataclass(slots=True)
class MailRequest:
    """A client's MAIL as it goes upstream: ``sender`` ("" for ``<>``) and its parameters
    (``{"SIZE": "12", "BODY": "8BITMIME", "SMTPUTF8": ""}``)."""

    sender: str
    options: Mapping[str, str]


@dataclass(slots=True)
class SessionInfo:
    """What the core needs to know of a connected, logged-in upstream session."""

    capabilities: EhloCapabilities
    pipelining: bool  # offered and allowed by the endpoint's setting
    chunking: bool  # BDAT may be used (implies pipelining)
    reused: bool  # lent by the pool after an earlier transaction (it may be stale)


# --- commands (out) -----------------------------------------------------------------------------

@dataclass(slots=True)
class Answer:
    """The client's reply; ``failure`` is logged (account, upstream reply, fix) when set."""

    reply: SmtpReply
    failure: BaseException | None = None


@dataclass(slots=True)
class Acquire:
    """Get a connected, logged-in session (``fresh``: not a pooled idle one). -> SessionReady/Failed"""

    fresh: bool


@dataclass(slots=True)
class SendMail:
    """Send MAIL, with the first RCPT when ``rcpt`` is set (one write when the session pipelines,
    else RCPT only after a 2xx to MAIL). -> Replied(mail, rcpt or None)/Failed"""

    mail: bytes
    rcpt: bytes | None = None


@dataclass(slots=True)
class SendRcpt:
    """Send one RCPT. -> Replied/Failed"""

    rcpt: bytes


class SendRset:
    """Send RSET. -> Replied/Failed"""


@dataclass(slots=True)
class StartContent:
    """Open the content path: BDAT (``chunking``) or DATA. -> nothing (the sink reports later)"""

    chunking: bool


class Drop:
    """Abort the held session (pooling: free its slot); it is never reused."""


class Release:
    """Pooling: give the held session back, clean (no upstream transaction open)."""


class Quit:
    """Close the held session politely (QUIT)."""


DROP, RELEASE, QUIT, SEND_RSET = Drop(), Release(), Quit(), SendRset()
Command = Answer | Acquire | SendMail | SendRcpt | SendRset | StartContent | Drop | Release | Quit


# --- outcomes (in) ------------------------------------------------------------------------------

@dataclass(slots=True)
class SessionReady:
    """`Acquire` succeeded."""

    info: SessionInfo


@dataclass(slots=True)
class Replied:
    """The upstream's reply to `Send` (``second``: the pipelined RCPT's, when one came);
    ``connected``: the session is still open after it."""

    first: SmtpReply
    second: SmtpReply | None = None
    connected: bool = True


@dataclass(slots=True)
class Failed:
    """A request failed (connect, login, token, dropped connection, timeout ...)."""

    error: BaseException


Outcome = SessionReady | Replied | Failed


@dataclass(slots=True)
class ContentResult:
    """How the content ended: ``reply`` the upstream's final reply, or ``refused`` our own refusal
    (the sink abandoned the upstream), or ``error`` an upstream failure. ``open_after``: the
    upstream still holds the transaction (RSET due before the next MAIL)."""

    reply: SmtpReply | None = None
    refused: SmtpReply | None = None
    error: BaseException | None = None
    open_after: bool = False

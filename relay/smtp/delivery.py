"""The delivery seam: what happens to a client's mail transactions, per account.

The local SMTP side (`relay.smtp.handler`, aiosmtpd) knows who is logged in and parses the
client's commands; for everything after that it talks to one `Delivery` per connection and
account, and sends the `SmtpReply` values it gets back. A delivery answers each step of the
transaction, and the promise is the same for all: 250 after the final dot only once the message
is accepted for good (by the upstream, or durably stored).

Implementations:

* `relay.smtp.forward.LiveSmtpDelivery` (today's behaviour): forwards MAIL, RCPT and the content
  to the account's upstream SMTP server as they arrive and passes its replies on.
* A spool ("store, deliver later") answers MAIL/RCPT locally after its own checks, writes the
  content with the envelope to disk in `ContentSink.write`, and in `ContentSink.finish` fsyncs and
  answers ``250 queued``; its sender runs elsewhere.
* Microsoft Graph ("send the finished message over HTTP") collects the envelope, buffers the
  content (to a temporary file past a size) and sends it in `ContentSink.finish`, mapping the HTTP
  answer to a reply.

Which one an account gets is decided by a `DeliveryFactory` given to the SMTP server
(`relay.app` wires it); nothing on the local SMTP side changes for a new kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from relay.config.model import AccountConfig
from relay.smtp.dataframe import DataFramer
from relay.smtp.reply import EhloCapabilities, SmtpReply


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a delivery may know about the client connection it serves."""

    session_id: str  # for log lines
    client_address: str
    hostname: str  # our own host name (EHLO upstream)
    busy: Callable[[], AbstractContextManager[None]]
    """Wrap waits on the far side in ``with busy():`` so the client idle timer does not fire."""


class ContentSink(Protocol):
    """Where the client's DATA streams (dot-stuffed wire bytes, as received)."""

    max_bytes: int

    async def write(self, wire_bytes: bytes) -> None:
        """Take more content; failures are remembered for `finish`, never raised."""
        ...

    def abandon(self) -> None:
        """The message will not be completed (client gone, our refusal): nothing may be sent."""
        ...

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> SmtpReply:
        """Take the last content (``tail``) and the end of data; return the client's final reply
        (``framer.problem`` says whether we refuse the content ourselves)."""
        ...


class Delivery(Protocol):
    """One client connection's transactions for one account (see the module docstring)."""

    account: AccountConfig

    def size_limit(self) -> int:
        """The SIZE to advertise and enforce now."""
        ...

    def path_capabilities(self) -> EhloCapabilities | None:
        """What the far side supports end to end (8BITMIME, SMTPUTF8), once known; None before."""
        ...

    async def mail(self, sender: str, options: Mapping[str, str]) -> SmtpReply:
        """MAIL FROM (``sender`` "" for ``<>``; ``options`` such as ``{"SIZE": "12"}``)."""
        ...

    async def rcpt(self, address: str) -> SmtpReply:
        """RCPT TO; the reply for this recipient."""
        ...

    async def open_content(self) -> ContentSink | SmtpReply:
        """DATA: the sink the content goes to (the client hears 354), or the refusal. Meant to
        answer at once; a delivery that must wait wraps the wait in ``ConnectionInfo.busy``."""
        ...

    async def reset(self) -> None:
        """RSET, HELO/EHLO: abandon the transaction, if any."""
        ...

    async def quit(self) -> None:
        """The client said QUIT: end politely."""
        ...

    def close(self) -> None:
        """The client is gone (or logged in elsewhere): end now, deliver nothing unfinished."""
        ...

    def summary(self) -> tuple[int, int, str | None]:
        """(messages accepted, their bytes, the last far-side reply) for the session log line."""
        ...


class DeliveryFactory(Protocol):
    """Makes the delivery for an account on a new connection (or after a login); one per
    listener. `close` runs when the listener has stopped (QUIT pooled sessions, stop a sender)."""

    def __call__(self, account: AccountConfig, conn: ConnectionInfo) -> Delivery:
        """The delivery for ``account`` on the connection ``conn``."""
        ...

    async def close(self) -> None:
        """Release what the deliveries share; no connection uses them any more."""
        ...

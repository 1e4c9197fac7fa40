"""The POP3 mailbox seam: what a POP3 session talks to once the client is logged in.

The local side (`relay.pop3.protocol` + `relay.pop3.session`) parses and validates the client's
commands and sends each TRANSACTION command, rebuilt as a canonical line (``RETR 3\\r\\n``), to a
`Pop3Mailbox`; it writes back the status line and, for a positive multi-line reply, the body
parts the mailbox streams (dot-stuffed wire bytes up to and including the terminating ``.``).
The promise is the same for every implementation: deletions (DELE) take effect only in `quit`
(the client's QUIT, RFC 1939's UPDATE state); `close` (disconnect, timeout, error, shutdown)
ends the session with nothing deleted. A body that fails midway raises an `UpstreamError` from
`stream_body` and the session closes without the terminator, so a truncated message is never
taken as complete.

Implementations:

* `relay.pop3.upstream.UpstreamPop3Session`: the account's upstream POP3 server with XOAUTH2
  (commands forwarded, replies passed through).
* `relay.graph.mailbox.GraphMailbox`: the account's Inbox through Microsoft Graph
  (``read_via: graph``), answering POP3 itself from a snapshot taken at login.

Which one a login gets is decided by a `MailboxOpener` given to the POP3 server (`relay.app`
wires it); the default opens the upstream POP3 server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from relay.config.model import AccountConfig, LimitsConfig
from relay.pop3.replies import StatusLine
from relay.tokens.source import TokenSource


class Pop3Mailbox(Protocol):
    """One logged-in session's mailbox (see the module docstring)."""

    capabilities: tuple[str, ...] | None
    """The CAPA lines to take into account after login (None: no CAPA)."""

    @property
    def has_buffered_data(self) -> bool:
        """True when body bytes are already at hand (the status line may go out with them)."""
        ...

    async def command(self, line: bytes) -> StatusLine:
        """One canonical TRANSACTION command (not QUIT); its status line."""
        ...

    def stream_body(self) -> AsyncIterator[bytes]:
        """After a positive multi-line status: the body, dot-stuffed, ending with ``.\\r\\n``."""
        ...

    async def quit(self) -> StatusLine:
        """The client's QUIT: apply the deletions (UPDATE) and end; the status for the client."""
        ...

    async def close(self) -> None:
        """End without UPDATE: nothing is deleted."""
        ...


MailboxOpener = Callable[[AccountConfig, TokenSource, LimitsConfig],
                         Awaitable[tuple[Pop3Mailbox, StatusLine]]]
"""Logs in to an account's mailbox; returns it and the +OK status for the client. Raises the
`relay.errors` tree (AuthorizationNeeded, UpstreamUnavailable, UpstreamAuthRejected ...)."""

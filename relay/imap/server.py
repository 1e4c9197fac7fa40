"""The IMAP proxy listener: a `relay.lineproto.listener.LineListener` running `ImapProxySession`s.

The listening socket, TLS (TLS on connect or STARTTLS, ``listen.imap``), connection caps and
graceful stop live in the base; this module adds the IMAP words of a refused connection.
"""

from __future__ import annotations

import asyncio
import logging

from relay.imap.session import ImapProxySession
from relay.imap.syntax import untagged
from relay.lineproto.listener import LineListener


class ImapProxyServer(LineListener):
    """Local IMAP listener that forwards each logged-in session upstream with XOAUTH2."""

    protocol = "imap"
    log = logging.getLogger("relay.imap")

    def _new_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session_id: str) -> ImapProxySession:
        return ImapProxySession(reader, writer, self._ctx, session_id)

    def _too_many_connections(self) -> bytes:
        return untagged("BYE [UNAVAILABLE] Too many connections; try again later")

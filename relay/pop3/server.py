"""The POP3 proxy listener: a `relay.lineproto.listener.LineListener` running `Pop3ProxySession`s.

The listening socket, TLS (TLS on connect or STLS, ``listen.pop3``), connection caps and graceful
stop live in the base; this module adds the mailbox opener each login uses (relay.pop3.mailbox:
the upstream POP3 server, or Microsoft Graph) and the POP3 words of a refused connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from relay.config.model import RelayConfig
from relay.lineproto.listener import LineListener
from relay.metrics import RelayObserver
from relay.pop3.mailbox import MailboxOpener
from relay.pop3.replies import err
from relay.pop3.session import Pop3ProxySession
from relay.pop3.upstream import open_upstream
from relay.tokens.source import TokenSource

if TYPE_CHECKING:
    from relay.localauth import LocalAuthenticator


class Pop3ProxyServer(LineListener):
    """Local POP3 listener that forwards each logged-in session upstream with XOAUTH2."""

    protocol = "pop3"
    log = logging.getLogger("relay.pop3")

    def __init__(self, config: RelayConfig, tokens: TokenSource,
                 authenticator: LocalAuthenticator, *, mailboxes: MailboxOpener | None = None,
                 observer: RelayObserver | None = None) -> None:
        super().__init__(config, tokens, authenticator, observer=observer)
        self._open_mailbox = mailboxes or open_upstream

    def _new_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session_id: str) -> Pop3ProxySession:
        return Pop3ProxySession(reader, writer, self._ctx, session_id, open_mailbox=self._open_mailbox)

    def _too_many_connections(self) -> bytes:
        return err("Too many connections; try again later", "SYS/TEMP")

"""A closed IMAP session is freed by reference counting, not left in cycles for the cycle collector
(bench/README.md, memory): real sessions through the relay to Dovecot, automatic collector off.

After the login the relay splices the two connections (relay/imap/splice.py); the splice, its two
halves and the stream protocols it took the transports from must all go when the session ends.
"""

from __future__ import annotations

import asyncio
import imaplib
import socket
import threading

import pytest
from imap_world import PASSWORD, TIMEOUT_S, imap_login, user
from support.cycles import assert_freed, no_cycle_collector, track

from relay.imap.session import ImapProxySession
from relay.imap.splice import Splice

pytestmark = pytest.mark.real_servers


def test_closed_sessions_are_freed_without_the_cycle_collector(imap_world, account: int,  # type: ignore[no-untyped-def]
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Spliced sessions (plain, STARTTLS, implicit TLS; LOGOUT), a hang-up before login and a
    failed login: every session, splice and stream protocol (the relay's, client and upstream
    side) is freed by reference counting."""
    relay = imap_world.relay
    sessions = track(monkeypatch, ImapProxySession)
    splices = track(monkeypatch, Splice)
    # The relay's own stream protocols (client and upstream side), not the OAuth provider's.
    protocols = track(monkeypatch, asyncio.StreamReaderProtocol,
                      only=lambda: threading.current_thread().name == relay.loop.name)
    with no_cycle_collector():
        for tls in ("none", "starttls", "implicit"):
            client = imap_login(relay.ports[tls], account, tls=tls, cert=imap_world.cert)
            assert client.select("INBOX")[0] == "OK"
            assert client.logout()[0] == "BYE"
        with socket.create_connection(("127.0.0.1", relay.ports["none"]), timeout=TIMEOUT_S) as sock:
            assert sock.recv(100).startswith(b"* OK")
        client = imaplib.IMAP4("127.0.0.1", relay.ports["none"], timeout=TIMEOUT_S)
        with pytest.raises(imaplib.IMAP4.error):
            client.login(user(account), PASSWORD + " wrong")
        client.shutdown()
        assert len(sessions) == 5 and len(splices) == 3
        assert_freed(sessions, "IMAP session")
        assert_freed(splices, "IMAP splice")
        assert_freed(protocols, "stream protocol")

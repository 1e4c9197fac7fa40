"""A closed POP3 session is freed by reference counting, not left in cycles for the cycle collector
(bench/README.md, memory): real sessions over loopback with the automatic collector off."""

from __future__ import annotations

import poplib

import pytest
from support.cycles import assert_ended_sessions_freed

from relay.pop3.session import Pop3ProxySession

from .conftest import PASSWORD, RunningPop3Relay, StartPop3Relay, username


def _quit_after_stat(relay: RunningPop3Relay) -> None:
    client = relay.pop()
    client.stat()
    client.quit()


def _vanish_after_login(relay: RunningPop3Relay) -> None:
    client = relay.pop()
    client.stat()
    client.close()


def _failed_login(relay: RunningPop3Relay) -> None:
    client = relay.pop(login=False)
    client.user(username(0))
    with pytest.raises(poplib.error_proto):
        client.pass_(PASSWORD + " wrong")
    client.close()


def _junk_then_hang_up(relay: RunningPop3Relay) -> None:
    raw = relay.raw()
    assert raw.cmd(b"X" * 5000).startswith(b"-ERR")
    raw.sock.close()


ENDINGS = [_quit_after_stat, _vanish_after_login, _failed_login, _junk_then_hang_up]


def test_closed_sessions_are_freed_without_the_cycle_collector(pop3_relay: StartPop3Relay,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions that ended by QUIT, a vanished client, a failed login or junk are freed by
    reference counting alone."""
    assert_ended_sessions_freed(pop3_relay(), monkeypatch, Pop3ProxySession, ENDINGS, "POP3 session")

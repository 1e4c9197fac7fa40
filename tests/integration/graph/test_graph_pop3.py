"""POP3 over Microsoft Graph with the real relay: poplib -> RelayApp -> the fake Graph Inbox.

Proves RFC 1939 semantics on a Graph mailbox: a snapshot at login (paged, capped), RETR/TOP from
$value, UIDL stable across sessions, DELE applied only at QUIT (move to Deleted Items or delete),
and nothing deleted when the connection drops or after RSET.
"""

from __future__ import annotations

import poplib
import socket

import pytest
from support.app_harness import wait_until

from relay.graph.maildrop import uidl_for
from relay.sandbox.world import SandboxWorld

from .conftest import MAILBOX, PASSWORD, USERNAME, GraphRelay, StartGraphRelay


def pop(relay: GraphRelay) -> poplib.POP3:
    """A poplib client logged in to the relay."""
    client = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=30)
    client.user(USERNAME)
    client.pass_(PASSWORD)
    return client


def wait_for_no_sessions(relay: GraphRelay, timeout_s: float = 10) -> None:
    """Wait until the relay has ended every POP3 session (the dropped one included)."""
    current = relay.app._current
    assert current is not None
    server = current.servers["pop3"]
    wait_until(lambda: not server._tasks, timeout_s, "the dropped POP3 session to end")  # type: ignore[attr-defined]


def bounce(n: int) -> bytes:
    """A small bounce-like message."""
    return (f"From: MAILER-DAEMON@example.com\r\nTo: {MAILBOX}\r\nSubject: bounce {n}\r\n\r\n"
            f"Delivery failed {n}\r\n.dot line\r\n").encode()


def removals(world: SandboxWorld) -> list[tuple[str, str, int]]:
    """Move and DELETE requests the fake Graph saw."""
    return [r for r in world.graph.request_log() if r[0] == "DELETE" or r[1].endswith("/move")]


def test_stat_list_uidl_retr_top(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """The Inbox appears oldest first; RETR gives the message, TOP the header and n lines, UIDL the
    stable id (the same in a second session)."""
    relay = start_graph_relay()
    ids = [world.graph.mailboxes.deliver(MAILBOX, bounce(n)) for n in (1, 2, 3)]
    client = pop(relay)
    assert client.stat() == (3, sum(len(bounce(n)) for n in (1, 2, 3)))
    _, listing, _ = client.list()
    assert listing == [f"{n} {len(bounce(n))}".encode() for n in (1, 2, 3)]
    _, uidls, _ = client.uidl()
    assert uidls == [f"{n} {uidl_for(i)}".encode() for n, i in enumerate(ids, 1)]
    assert all(1 <= len(u.split()[1]) <= 70 for u in uidls)
    _, lines, _ = client.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == bounce(2)
    _, top, _ = client.top(3, 1)
    assert top == [b"From: MAILER-DAEMON@example.com", f"To: {MAILBOX}".encode(), b"Subject: bounce 3", b"",
                   b"Delivery failed 3"]
    client.quit()
    second = pop(relay)
    assert second.uidl()[1] == uidls
    second.quit()
    assert removals(world) == []


def test_retr_wire_is_crlf_and_dot_stuffed(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """Bare LF and CR become CRLF, leading dots are stuffed, and the body ends with CRLF . CRLF."""
    relay = start_graph_relay()
    world.graph.mailboxes.deliver(MAILBOX, b"Subject: x\n\n.a\rb\n..c")
    with socket.create_connection(("127.0.0.1", relay.pop3_port), timeout=30) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        for line in (f"USER {USERNAME}", f"PASS {PASSWORD}", "RETR 1", "QUIT"):
            stream.write(line.encode() + b"\r\n")
        stream.flush()
        replies = b"".join(iter(lambda: stream.read(1), b""))
    assert b"message follows" in replies
    assert b"\r\nSubject: x\r\n\r\n..a\r\nb\r\n...c\r\n.\r\n" in replies


@pytest.mark.parametrize(("mode", "folder_after"), [("move", "deleteditems"), ("delete", None)])
def test_dele_takes_effect_at_quit_only(start_graph_relay: StartGraphRelay, world: SandboxWorld,
                                        mode: str, folder_after: str | None) -> None:
    """DELE marks; nothing reaches Graph until QUIT, which moves to Deleted Items (or deletes)."""
    relay = start_graph_relay(delete=mode)
    ids = [world.graph.mailboxes.deliver(MAILBOX, bounce(n)) for n in (1, 2, 3)]
    client = pop(relay)
    client.dele(1)
    client.dele(3)
    assert client.stat()[0] == 1
    assert removals(world) == []
    assert b"2 messages" in client.quit()
    inbox = [m.id for m in world.graph.mailboxes.folder(MAILBOX, "inbox")]
    assert inbox == [ids[1]]
    deleted = [m.id for m in world.graph.mailboxes.folder(MAILBOX, "deleteditems")]
    assert deleted == ([ids[0], ids[2]] if folder_after else [])
    assert len(removals(world)) == 2


def test_dropped_connection_deletes_nothing(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """DELE then a dropped connection: the Inbox is unchanged and no move/delete was requested."""
    relay = start_graph_relay()
    ids = [world.graph.mailboxes.deliver(MAILBOX, bounce(n)) for n in (1, 2)]
    client = pop(relay)
    client.dele(1)
    client.dele(2)
    client.close()  # both the socket and its file: the connection really drops, no QUIT
    wait_for_no_sessions(relay)
    second = pop(relay)
    assert second.stat()[0] == 2
    second.rset()
    second.quit()
    assert [m.id for m in world.graph.mailboxes.folder(MAILBOX, "inbox")] == ids
    assert removals(world) == []


def test_rset_unmarks(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """DELE, RSET, QUIT: nothing is deleted."""
    relay = start_graph_relay()
    world.graph.mailboxes.deliver(MAILBOX, bounce(1))
    client = pop(relay)
    client.dele(1)
    client.rset()
    client.quit()
    assert len(world.graph.mailboxes.folder(MAILBOX, "inbox")) == 1 and removals(world) == []


def test_snapshot_is_paged_capped_and_fixed(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """25 messages, page_size 10, max_messages 20: two list requests, the oldest 20 shown; a message
    arriving during the session is not in it (numbers stay valid)."""
    relay = start_graph_relay(page_size=10, max_messages=20)
    ids = [world.graph.mailboxes.deliver(MAILBOX, bounce(n)) for n in range(25)]
    client = pop(relay)
    assert client.stat()[0] == 20
    lists = [r for r in world.graph.request_log() if r[1].endswith("/messages")]
    assert len(lists) == 2
    world.graph.mailboxes.deliver(MAILBOX, bounce(99))
    assert client.stat()[0] == 20
    assert client.uidl(20).split()[-1] == uidl_for(ids[19]).encode()
    client.quit()


def test_bad_commands_get_err_and_the_session_stays(start_graph_relay: StartGraphRelay,
                                                    world: SandboxWorld) -> None:
    """Out-of-range, deleted and malformed message numbers get -ERR; the session goes on."""
    relay = start_graph_relay()
    world.graph.mailboxes.deliver(MAILBOX, bounce(1))
    client = pop(relay)
    for command in ("RETR 0", "RETR 2", "TOP 1", "LIST 1 2", "RETR abc", "DELE 7"):
        with pytest.raises(poplib.error_proto):
            client._shortcmd(command)
    client.dele(1)
    with pytest.raises(poplib.error_proto, match="already deleted"):
        client.retr(1)
    assert client.noop().startswith(b"+OK")
    client.rset()
    client.quit()
    assert removals(world) == []


def test_missing_read_permission_is_sys_perm(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """A token without Mail.Read/Mail.ReadWrite: the login is refused with [SYS/PERM]."""
    relay = start_graph_relay()
    world.graph.denied_permissions.update({"Mail.Read", "Mail.ReadWrite"})
    client = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=30)
    client.user(USERNAME)
    with pytest.raises(poplib.error_proto, match=r"SYS/PERM"):
        client.pass_(PASSWORD)
    client.close()


def test_throttled_login_is_sys_temp(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """Graph throttling at login (Retry-After 60): -ERR [SYS/TEMP], the client may retry later."""
    relay = start_graph_relay()
    world.graph.throttle(1, retry_after="60")
    client = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=30)
    client.user(USERNAME)
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
        client.pass_(PASSWORD)
    client.close()

"""Crash safety of the spool with a real `relay serve` process killed by SIGKILL at each point.

The relay is armed with ``RELAY_TEST_CRASH_AT`` (`relay.spool.crashpoints`), kills itself at that
point, and is restarted without it. Every message a client got 250 for is then delivered; no
partial message ever reaches the upstream; the one duplicate window (after the upstream's 250,
before the spool entry is removed) gives exactly one extra copy.
"""

from __future__ import annotations

import signal
import smtplib
from typing import Any

import pytest
from ops_helpers import PASSWORD, OpsSetup

from relay.sandbox.world import SandboxWorld
from relay.spool.crashpoints import ENV

# Over 256 KiB: it goes upstream by DATA in several writes, so "upstream_data" is mid-content.
MESSAGE = b"From: app@sandbox.test\r\nSubject: crash test\r\n\r\n" + b"line of the body\r\n" * 20000


def _send(port: int) -> bool:
    """Send MESSAGE; True when the relay answered 250 after the final dot."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login("ops-app", PASSWORD)
            client.mail("app@sandbox.test")
            client.rcpt("to@example.com")
            code, _ = client.data(MESSAGE)
            return code == 250
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        return False


@pytest.mark.parametrize(("point", "acknowledged", "copies"), [
    ("writing", False, 0),  # the client never heard 250: nothing promised, nothing sent
    ("written", False, 0),  # fsynced in tmp/ but not committed: removed at restart
    ("committed", False, 1),  # durable, 250 not sent: delivered (the client may send it again)
    ("upstream_data", True, 1),  # killed mid-DATA upstream: no partial message, sent again whole
    ("upstream_accepted", True, 2),  # the documented window: exactly one duplicate
])
def test_sigkill_at_each_point_loses_nothing_acknowledged(
        spool_ops: OpsSetup, serve: Any, sandbox: SandboxWorld, monkeypatch: pytest.MonkeyPatch,
        point: str, acknowledged: bool, copies: int) -> None:
    """Kill at ``point``, restart: the acknowledged message is delivered, whole, the expected
    number of times; the spool is empty afterwards."""
    monkeypatch.setenv(ENV, point)
    first = serve(spool_ops.config_path)
    port = first.wait_listening()["smtp"]
    assert _send(port) is acknowledged
    assert first.wait(60) == -signal.SIGKILL
    assert all(m.data == MESSAGE for m in sandbox.smtp.messages())  # never a partial message
    monkeypatch.delenv(ENV)
    second = serve(spool_ops.config_path)
    second.wait_listening()
    if copies:
        stored = sandbox.smtp.wait_for_messages(copies, timeout_s=20)
        assert [m.data for m in stored] == [MESSAGE] * copies
    spool = spool_ops.dir / "spool"
    second.wait_for("delivered" if copies else "0 message(s) queued")
    second.wait_for("relay running")  # signal handlers installed
    assert list((spool / "tmp").iterdir()) == []
    second.signal(signal.SIGTERM)
    assert second.wait(60) == 0
    assert list((spool / "queue").iterdir()) == []
    assert len(sandbox.smtp.messages()) == copies

"""`relay queue list|show|retry|delete` against the spool of a running `relay serve`."""

from __future__ import annotations

import signal
import smtplib
import urllib.request
from typing import Any

import pytest
import yaml
from ops_helpers import PASSWORD, OpsSetup, run_relay
from support.serve import LISTENER_LINE

from relay.sandbox.world import SandboxWorld

DOWN = "421 4.3.2 Service not available"


def _send(port: int, subject: str, to: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("ops-app", PASSWORD)
        client.mail("app@sandbox.test")
        client.rcpt(to)
        code, text = client.data(f"Subject: {subject}\r\nX-Test: yes\r\n\r\nbody\r\n".encode())
        assert code == 250
        return text.decode().rsplit(" ", 1)[1]


@pytest.mark.parametrize("spool_ops", [3600], indirect=True)
def test_queue_list_show_delete_and_retry_while_serving(spool_ops: OpsSetup, serve: Any,
                                                        sandbox: SandboxWorld) -> None:
    """list shows each queued message with account, sender, recipients, attempts and the last error;
    show prints envelope and headers; delete removes one (never delivered); retry --all makes the
    running relay try again at once despite a 1 h backoff, and the rest is delivered."""
    sandbox.smtp.greeting_reply = DOWN
    proc = serve(spool_ops.config_path)
    port = proc.wait_listening()["smtp"]
    keep = _send(port, "keep-me", "a@example.com")
    drop = _send(port, "drop-me", "b@example.com")
    proc.wait_for("not sent, attempt 1")
    proc.wait_for("relay running")  # signal handlers installed
    config = ("-c", str(spool_ops.config_path))
    listing = run_relay("queue", "list", *config)
    assert listing.returncode == 0, listing.stderr
    assert keep in listing.stdout and drop in listing.stdout
    assert "ops" in listing.stdout and "<app@sandbox.test>" in listing.stdout
    assert "a@example.com" in listing.stdout and "421 4.3.2" in listing.stdout
    shown = run_relay("queue", "show", keep, *config)
    assert shown.returncode == 0, shown.stderr
    assert "Subject: keep-me" in shown.stdout and "recipients:  a@example.com" in shown.stdout
    admin = yaml.safe_load(spool_ops.config_path.read_text())["admin"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin['port']}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'xoauth2relay_spool_messages{account="ops"} 2.0' in metrics
    assert "xoauth2relay_spool_oldest_message_age_seconds" in metrics
    assert run_relay("queue", "delete", drop, *config).returncode == 0
    assert drop not in run_relay("queue", "list", *config).stdout
    assert run_relay("queue", "show", "nope", *config).returncode == 1
    sandbox.smtp.clear_faults()
    retried = run_relay("queue", "retry", "--all", *config)
    assert retried.returncode == 0 and "1 message(s)" in retried.stdout
    (stored,) = sandbox.smtp.wait_for_messages(1, timeout_s=20)
    assert b"Subject: keep-me" in stored.data
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert sandbox.smtp.messages() == [stored]


@pytest.mark.parametrize("spool_ops", [3600], indirect=True)
def test_sighup_keeps_the_spool_and_delivers_with_the_new_configuration(
        spool_ops: OpsSetup, serve: Any, sandbox: SandboxWorld) -> None:
    """A message queued before SIGHUP is delivered after it (the worker uses the new token manager
    and settings), and a message sent after the reload is spooled into the same directory."""
    sandbox.smtp.greeting_reply = DOWN
    proc = serve(spool_ops.config_path)
    port = proc.wait_listening()["smtp"]
    before = _send(port, "before-reload", "a@example.com")
    proc.wait_for("not sent, attempt 1")
    proc.wait_for("relay running")  # signal handlers installed
    proc.signal(signal.SIGHUP)
    proc.wait_for("configuration reloaded")
    port = [int(p) for name, p in LISTENER_LINE.findall(proc.output()) if name == "smtp"][-1]  # port 0
    after = _send(port, "after-reload", "b@example.com")
    listing = run_relay("queue", "list", "-c", str(spool_ops.config_path)).stdout
    assert before in listing and after in listing
    sandbox.smtp.clear_faults()
    assert run_relay("queue", "retry", "--all", "-c", str(spool_ops.config_path)).returncode == 0
    stored = sandbox.smtp.wait_for_messages(2, timeout_s=20)
    assert sorted(m.data.split(b"\r\n", 1)[0] for m in stored) == [b"Subject: after-reload",
                                                                   b"Subject: before-reload"]
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0

"""`relay demo` as a subprocess: the round trip works and Ctrl-C ends it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from ops_helpers import relay_cmd, run_relay, wait_until


def test_demo_once_sends_and_fetches_the_message() -> None:
    """`relay demo --once` authorizes, sends through SMTP, fetches over POP3 and IMAP, exits 0."""
    result = run_relay("demo", "--once", "--smtp-port", "0", "--pop3-port", "0", "--imap-port", "0",
                       timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("\u2713") == 7
    assert "Authorized account 'demo'" in out
    assert "Sent a message through the relay's SMTP" in out and "XOAUTH2 as demo@sandbox.test" in out
    assert "Fetched it back over the relay's POP3" in out
    assert "Fetched it again over the relay's IMAP" in out
    assert "Round trip OK" in out
    assert "sandbox-secret" not in out + result.stderr


def test_demo_serves_until_sigint_then_exits_zero(tmp_path: Path) -> None:
    """Without --once the demo prints how to try it by hand, keeps serving, and exits 0 on SIGINT."""
    log = tmp_path / "demo.out"
    with log.open("wb") as fh:
        proc = subprocess.Popen(relay_cmd("demo", "--smtp-port", "0", "--pop3-port", "0", "--imap-port", "0"),
                                stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return "Press Ctrl-C to stop." in log.read_text()

        wait_until(ready, 120, "the demo to say how to stop it")
        text = log.read_text()
        assert "swaks --server 127.0.0.1:" in text and "--auth-user demo-app" in text
        config_line = next(line for line in text.splitlines() if "relay check -c" in line)
        config_path = Path(config_line.split("-c", 1)[1].strip())
        assert config_path.exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert "Stopping the demo" in log.read_text()
        assert not config_path.exists()  # the temporary config and store key are removed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

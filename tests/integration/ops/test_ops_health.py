"""`relay health`: exit 0 only when every enabled listener greets correctly."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from ops_helpers import OpsSetup, free_port, run_relay


@pytest.fixture
def wrong_greeter() -> Iterator[int]:
    """A TCP server on loopback that greets with something that is not SMTP."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_health_ok_while_serving(ops: OpsSetup, serve) -> None:
    """With `relay serve` running, `relay health` reports both listeners ok and exits 0."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    proc = serve(ops.write())
    proc.wait_listening()
    result = run_relay("health", "-c", str(ops.config_path), "--timeout", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"smtp 127.0.0.1:{ops.smtp_port}: ok (220" in result.stdout
    assert f"pop3 127.0.0.1:{ops.pop3_port}: ok (+OK" in result.stdout


def test_health_fails_when_nothing_listens(ops: OpsSetup) -> None:
    """With no relay running, `relay health` exits 1 and names the listener that failed."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    result = run_relay("health", "-c", str(ops.write()), "--timeout", "2")
    assert result.returncode == 1
    assert "smtp" in result.stdout and "FAILED (cannot connect" in result.stdout


def test_health_fails_on_a_wrong_greeting_and_quiet_prints_nothing(ops: OpsSetup, wrong_greeter: int) -> None:
    """A listener port answered by something else is unhealthy; --quiet only sets the exit code."""
    ops.smtp_port = wrong_greeter
    ops.pop3_port = free_port()
    config = ops.write()
    result = run_relay("health", "-c", str(config), "--timeout", "5")
    assert result.returncode == 1
    assert "unexpected greeting" in result.stdout
    quiet = run_relay("health", "-c", str(config), "--timeout", "2", "--quiet")
    assert quiet.returncode == 1 and quiet.stdout == ""


def test_health_with_a_disabled_listener_checks_only_the_other(ops: OpsSetup, wrong_greeter: int,
                                                              serve) -> None:
    """A disabled listener is not probed: a running SMTP listener alone is healthy."""
    ops.smtp_port, ops.pop3_port = free_port(), wrong_greeter
    config = ops.write()
    text = config.read_text().replace("pop3:\n    enabled: true", "pop3:\n    enabled: false", 1)
    config.write_text(text)
    proc = serve(config)
    proc.wait_for("listener smtp on")
    result = run_relay("health", "-c", str(config), "--timeout", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pop3" not in result.stdout

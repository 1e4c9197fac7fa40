"""The systemd unit passes `systemd-analyze verify`; `relay serve` speaks the notify protocol."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ops_helpers import OpsSetup, free_port, require_program

UNIT = Path(__file__).resolve().parents[3] / "docs" / "systemd" / "xoauth2-relay.service"


def _verify(analyze: str, unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    # ExecStart must name an existing executable: the relay as installed here, not /usr/local/bin.
    relay_path = shutil.which("relay")
    assert relay_path, "the relay command is not installed (pip install -e .)"
    unit = directory / "xoauth2-relay.service"
    unit.write_text(unit_text.replace("/usr/local/bin/relay", relay_path))
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The shipped unit verifies cleanly, and the same check reports a broken copy (it really checks)."""
    analyze = require_program("systemd-analyze", "systemd")
    text = UNIT.read_text()
    for needed in ("Type=notify", "LoadCredential=store-key:", "ProtectSystem=strict", "DynamicUser=yes",
                   "StateDirectory=xoauth2-relay", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec="):
        assert needed in text
    result = _verify(analyze, text, tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    broken = _verify(analyze, text.replace("Type=notify", "Type=notifyy"), tmp_path)
    assert broken.returncode != 0 or "notifyy" in broken.stderr


def _receive(sock: socket.socket, until: str, deadline_s: float = 30) -> list[str]:
    """Datagrams until one containing ``until`` (all of them returned)."""
    got: list[str] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} from the relay; got {got}")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_serve_sends_ready_watchdog_reloading_stopping(ops: OpsSetup, serve, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       abstract: bool) -> None:
    """On a socket the test owns: READY=1 (with STATUS) after start, WATCHDOG=1 at half the timeout,
    RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP, STOPPING=1 on SIGTERM; exit 0."""
    ops.seed("ops", "ops@sandbox.test")
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"xoauth2-relay-test-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with sock:
        proc = serve(ops.write())
        ready = _receive(sock, "READY=1")
        assert "STATUS=serving 1 account(s)" in ready[-1]
        watchdog = _receive(sock, "WATCHDOG=1")
        assert watchdog[-1] == "WATCHDOG=1"
        proc.signal(signal.SIGHUP)
        reload = _receive(sock, "READY=1")
        reloading = [m for m in reload if m.startswith("RELOADING=1")]
        assert len(reloading) == 1 and "\nMONOTONIC_USEC=" in reloading[0]
        assert reload.index(reloading[0]) < len(reload) - 1  # READY=1 came after RELOADING=1
        proc.signal(signal.SIGTERM)
        stopping = _receive(sock, "STOPPING=1")
        assert stopping[-1].startswith("STOPPING=1")
        assert proc.wait() == 0

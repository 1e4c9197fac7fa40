"""A 50 MB RETR streams through the proxy (`relay serve` in its own process) without buffering it."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

from support.app_harness import seed_accounts, write_relay_yaml
from support.relay_harness import authorized_token_set
from support.serve import ServeProcess

from relay.tokens.store import generate_key

from .conftest import PASSWORD, build_config, mailbox, username

MB = 1024 * 1024


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def big_message(size: int) -> bytes:
    """About ``size`` bytes of 76-octet lines, every 100th starting with '.'."""
    block = (b"B" * 74 + b"\r\n") * 99 + b"." + b"C" * 73 + b"\r\n"
    return b"Subject: big\r\n\r\n" + block * (size // len(block))


def retr_wire(sock: socket.socket, number: int, pause_after: int | None = None) -> tuple[bytes, int]:
    """Send RETR; return (sha256 of the body's wire bytes incl. terminator, its length).

    With ``pause_after`` the reader stops for a second after that many bytes (a slow client).
    """
    sock.sendall(f"RETR {number}\r\n".encode())
    buf = b""
    while b"\r\n" not in buf:
        buf += sock.recv(65536)
    status, _, rest = buf.partition(b"\r\n")
    assert status.startswith(b"+OK"), status
    digest, total, tail, paused = hashlib.sha256(rest), len(rest), rest[-5:], False
    while not (total >= 3 and (tail.endswith(b"\r\n.\r\n") or (total == 3 and tail == b".\r\n"))):
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed before the terminator"
        digest.update(chunk)
        total += len(chunk)
        tail = (tail + chunk)[-5:]
        if pause_after is not None and not paused and total > pause_after:
            paused = True
            time.sleep(1.0)
    return digest.digest(), total


def command(sock: socket.socket, line: bytes) -> bytes:
    """Send a single-line command and return its status line."""
    sock.sendall(line + b"\r\n")
    buf = b""
    while not buf.endswith(b"\r\n"):
        buf += sock.recv(4096)
    return buf


def test_fifty_megabyte_retr_keeps_relay_memory_flat(sandbox, tmp_path):
    """RETR of a 50 MB message (with a slow client) grows the relay's peak RSS by < 20 MB
    (`relay serve` in its own process, so the measurement is the relay's alone)."""
    small = b"Subject: warm-up\r\n\r\n" + (b"w" * 70 + b"\r\n") * 2000
    big = big_message(50 * MB)
    sandbox.pop3.deliver(mailbox(0), small)
    sandbox.pop3.deliver(mailbox(0), big)
    directory = tmp_path / "relay"
    directory.mkdir(mode=0o700)
    config = build_config(sandbox, directory)
    key = generate_key()
    seed_accounts(config, key, {"acct0": authorized_token_set(sandbox.oauth, "acct0", mailbox(0))})
    relay = ServeProcess(write_relay_yaml(config, directory, key), tmp_path / "serve.log")
    try:
        port = relay.wait_listening(listeners=("pop3",))["pop3"]
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.recv(1024)  # greeting
            assert command(sock, b"USER " + username(0).encode()).startswith(b"+OK")
            assert command(sock, b"PASS " + PASSWORD.encode()).startswith(b"+OK")
            retr_wire(sock, 1)  # warm up every code path (TLS, streaming) before the baseline
            baseline = peak_rss_bytes(relay.proc.pid)
            digest, length = retr_wire(sock, 2, pause_after=5 * MB)
            growth = peak_rss_bytes(relay.proc.pid) - baseline
            command(sock, b"QUIT")
        expected = big.replace(b"\n.", b"\n..") + b".\r\n"
        assert (digest, length) == (hashlib.sha256(expected).digest(), len(expected))
        assert growth < 20 * MB, f"relay peak RSS grew by {growth / MB:.1f} MB"
    finally:
        relay.close()

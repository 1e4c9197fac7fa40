"""Start the bench upstream in its own process and talk to its control API."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

from relay.tlsutil import generate_self_signed

REPO_ROOT = Path(__file__).resolve().parent.parent


class UpstreamProcess:
    """A running ``python -m bench.upstream``: its ports, certificate, control calls, CPU time."""

    def __init__(self, workdir: Path) -> None:
        self.cert, self.key = generate_self_signed(workdir / "upstream-tls")
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the process and wait for its ports (a few hundred ms)."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", "--cert", str(self.cert), "--key", str(self.key)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the bench upstream exited before printing its ports")
        self.ports = json.loads(line)

    @property
    def pid(self) -> int:
        """The upstream's process id."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint URL."""
        return f"http://127.0.0.1:{self.ports['http']}/token"

    def stop(self) -> None:
        """Close stdin (the upstream exits) and wait; kill it if it does not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    # --- control API --------------------------------------------------------------------------

    def call(self, method: str, path: str, payload: object | None = None) -> object:
        """One control request; returns the decoded JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=60)
        try:
            body = json.dumps(payload).encode() if payload is not None else b""
            conn.request(method, path, body=body, headers={"Connection": "close"})
            response = conn.getresponse()
            data = json.loads(response.read())
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"upstream control {path} -> {response.status} {data}")
        return data

    def stats(self) -> dict[str, int]:
        """The upstream's counters (smtp_messages, token_requests, smtp_connections ...)."""
        return self.call("GET", "/control/stats")["counts"]  # type: ignore[index]

    def reset(self) -> None:
        """Zero the counters and forget delivered messages."""
        self.call("POST", "/control/reset")

    def set_latency_ms(self, ms: float) -> None:
        """Delay every SMTP/POP3 reply by ``ms``."""
        self.call("POST", "/control/config", {"latency_ms": ms})

    def load_mailbox(self, count: int, size: int) -> list[str]:
        """Fill the POP3 mailbox; return the sha256 of each message's content."""
        return self.call("POST", "/control/mailbox", {"count": count, "size": size})["digests"]  # type: ignore[index]

    def delivered(self) -> list[str]:
        """Envelope digests of every message accepted since the last reset."""
        return self.call("GET", "/control/delivered")  # type: ignore[return-value]

    def issue_token(self) -> str:
        """An access token for direct clients (not counted as a token request)."""
        return self.call("POST", "/control/token")["access_token"]  # type: ignore[index]

"""A tiny blocking line client for transcript-style tests against SMTP/POP3 servers.

Unlike smtplib/poplib it sends exactly the bytes it is given and returns exactly what came back,
so tests can check a wire exchange line by line (pipelining, byte-stuffing, SASL steps).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Self


class LineClient:
    """A blocking TCP (optionally TLS) client with a receive buffer."""

    def __init__(self, host: str, port: int, *, ca_file: Path | None = None, implicit_tls: bool = False,
                 timeout_s: float = 10.0) -> None:
        self.host = host
        self._ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock: socket.socket = self._ctx.wrap_socket(sock, server_hostname=host) if implicit_tls else sock
        self.buf = bytearray()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (no QUIT)."""
        self.sock.close()

    def starttls(self) -> None:
        """Wrap the socket in TLS (after the server said it is ready)."""
        self.buf.clear()
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self.host)

    def send(self, data: bytes | str) -> None:
        """Send raw bytes (str is UTF-8 encoded)."""
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def send_line(self, line: bytes | str) -> None:
        """Send one line followed by CRLF."""
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        self.buf += chunk
        return bool(chunk)

    def read_line(self) -> str:
        """Read one line, without its CRLF. Raises EOFError at end of stream."""
        while (idx := self.buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise EOFError("connection closed")
        line = bytes(self.buf[:idx])
        del self.buf[: idx + 2]
        return line.decode("utf-8", "replace")

    def read_reply(self) -> tuple[int, str]:
        """Read a (possibly multi-line) SMTP reply; return (code, text with lines joined by LF)."""
        lines = []
        while True:
            line = self.read_line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    def command(self, line: str) -> tuple[int, str]:
        """Send an SMTP command line and read its reply."""
        self.send_line(line)
        return self.read_reply()

    def read_multiline(self) -> bytes:
        """Read a POP3 multi-line body up to the terminating '.' line; return the raw wire bytes
        (still byte-stuffed) without the terminator."""
        start = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                del self.buf[:3]
                return b""
            idx = self.buf.find(b"\r\n.\r\n", start)
            if idx >= 0:
                body = bytes(self.buf[: idx + 2])
                del self.buf[: idx + 5]
                return body
            start = max(0, len(self.buf) - 4)
            if not self._fill():
                raise EOFError("connection closed inside a multi-line reply")

    def read_until_eof(self) -> bytes:
        """Read everything until the server closes; return it (including what was buffered)."""
        while self._fill():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

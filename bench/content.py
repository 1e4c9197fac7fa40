"""Deterministic message content, dot-stuffing and digests shared by the upstream and the load generator.

Pure functions, no I/O. A message is a fixed body for its size plus a unique last line, so the
load generator hashes the big common part once and every message still has its own digest.
"""

from __future__ import annotations

import hashlib
import random

LINE_BYTES = 76  # body line length before CRLF, like a base64 MIME part
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def body(size: int, seed: int = 0) -> bytes:
    """Return about ``size`` bytes of CRLF-terminated lines, with some lines starting with '.'.

    The result has headers, so it is a valid RFC 5322 message once a last line is appended.
    """
    rng = random.Random(seed)
    pool = [bytes(rng.choice(_ALPHABET) for _ in range(LINE_BYTES)) for _ in range(64)]
    head = (b"From: bench <bench@example.com>\r\nTo: sink <sink@example.com>\r\n"
            b"Subject: bench " + str(size).encode() + b"\r\n\r\n")
    lines = [head]
    total = len(head)
    n = 0
    while total < size - 40:  # the unique last line adds about 40 bytes
        width = min(LINE_BYTES, max(1, size - 40 - total - 2))
        line = pool[n % len(pool)][:width]
        if n % 7 == 3:
            line = b"." + line[1:]  # exercise dot-stuffing on the wire
        lines.append(line + b"\r\n")
        total += width + 2
        n += 1
    return b"".join(lines)


def last_line(tag: str) -> bytes:
    """The unique final line of a message."""
    return f"X-Bench-Id: {tag}\r\n".encode()


def stuff(content: bytes) -> bytes:
    """Dot-stuff CRLF content for the wire (RFC 5321 4.5.2 / RFC 1939 3): '.' -> '..' at line start."""
    out = content.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def unstuff(wire: bytes) -> bytes:
    """Undo `stuff` for content read up to (not including) the terminating '.' line."""
    out = wire.replace(b"\r\n..", b"\r\n.")
    return out[1:] if out.startswith(b"..") else out


def envelope_digest(mail_from: str, rcpts: list[str], content: bytes) -> str:
    """sha256 over the envelope and the unstuffed content, as the upstream records it."""
    h = hashlib.sha256(f"{mail_from}\0{','.join(rcpts)}\0".encode())
    h.update(content)
    return h.hexdigest()


class MessageFactory:
    """Makes unique messages of one size and their envelope digests cheaply.

    ``wire(tag)`` is the dot-stuffed DATA content without the terminator; the common body is
    stuffed and hashed once.
    """

    def __init__(self, size: int, mail_from: str, rcpts: list[str]) -> None:
        self.mail_from = mail_from
        self.rcpts = rcpts
        self._body = body(size)
        self._wire_body = stuff(self._body)
        self._prefix = hashlib.sha256(f"{mail_from}\0{','.join(rcpts)}\0".encode())
        self._prefix.update(self._body)

    def wire(self, tag: str) -> list[bytes]:
        """The DATA content on the wire, as buffers to write in order (no copy of the body)."""
        return [self._wire_body, last_line(tag)]

    def digest(self, tag: str) -> str:
        """The envelope digest the upstream must record for message ``tag``."""
        h = self._prefix.copy()
        h.update(last_line(tag))
        return h.hexdigest()

    def size(self, tag: str) -> int:
        """Unstuffed content size in bytes."""
        return len(self._body) + len(last_line(tag))


def mailbox_message(size: int, index: int) -> bytes:
    """The unstuffed content of POP3 message ``index`` (1-based) of a bench mailbox."""
    return body(size, seed=1) + last_line(f"pop3-{size}-{index}")

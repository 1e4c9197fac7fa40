"""Pure: the POP3 view of a Graph mailbox snapshot (RFC 1939 TRANSACTION and UPDATE rules).

At login the session lists the Inbox once (ids and sizes); message numbers 1..n refer to that
snapshot for the whole session, as RFC 1939 requires. `Maildrop.answer` handles STAT, LIST,
UIDL, DELE, RSET and NOOP itself and tells the caller to fetch for RETR/TOP (`Fetch`). Deletions
are only marked; `to_delete` lists them for the UPDATE state after QUIT. Message content is
turned into a POP3 body by `PopBodyWriter` (CRLF line ends, dot-stuffing, TOP's line limit).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field

from relay.pop3.replies import CRLF, TERMINATOR, err, ok

MAX_UIDL_CHARS = 70  # RFC 1939 section 7
_UIDL_SAFE = re.compile(r"[\x21-\x7e]{1,70}")


def uidl_for(message_id: str) -> str:
    """The UIDL of a Graph immutable id: the id itself when RFC 1939 allows it (1-70 printable
    characters), else base64url(SHA-256(id)) without padding (43 characters), stable forever."""
    if _UIDL_SAFE.fullmatch(message_id):
        return message_id
    digest = hashlib.sha256(message_id.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    """One message of the login snapshot."""

    id: str  # Graph immutable id
    size: int  # octets (Graph's PidTagMessageSize)


@dataclass(frozen=True, slots=True)
class Fetch:
    """RETR (``lines`` None) or TOP (``lines`` body lines) of message ``number``."""

    number: int
    item: SnapshotItem
    lines: int | None


@dataclass
class Maildrop:
    """The session's snapshot and its deletion marks."""

    items: list[SnapshotItem]
    deleted: set[int] = field(default_factory=set)

    def _live(self) -> list[tuple[int, SnapshotItem]]:
        return [(n, item) for n, item in enumerate(self.items, 1) if n not in self.deleted]

    def _message(self, arg: str) -> tuple[int, SnapshotItem] | bytes:
        number = int(arg)
        if not 1 <= number <= len(self.items):
            return err("No such message")
        if number in self.deleted:
            return err("Message already deleted")
        return number, self.items[number - 1]

    def answer(self, line: bytes) -> bytes | Fetch:
        """The reply to a canonical TRANSACTION command line (not QUIT), or what to fetch."""
        keyword, *args = line.decode("ascii").split()
        if keyword == "NOOP":
            return ok()
        if keyword == "STAT":
            live = self._live()
            return ok(f"{len(live)} {sum(item.size for _, item in live)}")
        if keyword == "RSET":
            self.deleted.clear()
            return ok(f"maildrop has {len(self.items)} messages")
        if keyword in ("LIST", "UIDL"):
            return self._listing(keyword, args)
        found = self._message(args[0])
        if isinstance(found, bytes):
            return found
        number, item = found
        if keyword == "DELE":
            self.deleted.add(number)
            return ok(f"message {number} deleted")
        if keyword == "RETR":
            return Fetch(number, item, None)
        if keyword == "TOP":
            return Fetch(number, item, int(args[1]))
        return err("Unknown command")

    def _listing(self, keyword: str, args: list[str]) -> bytes:
        def value(item: SnapshotItem) -> str:
            return str(item.size) if keyword == "LIST" else uidl_for(item.id)

        if args:
            found = self._message(args[0])
            if isinstance(found, bytes):
                return found
            return ok(f"{found[0]} {value(found[1])}")
        live = self._live()
        head = ok(f"{len(live)} messages") if keyword == "LIST" else ok()
        return head + b"".join(f"{n} {value(item)}".encode() + CRLF for n, item in live) + TERMINATOR

    def to_delete(self) -> list[SnapshotItem]:
        """The messages marked for deletion, in number order."""
        return [self.items[n - 1] for n in sorted(self.deleted)]


class PopBodyWriter:
    """Turns message content arriving in chunks into a POP3 multi-line body.

    Lines end with CRLF (a bare LF or bare CR is made CRLF), lines starting with '.' are stuffed,
    and the body ends with ``.\\r\\n`` (after a CRLF if the content did not end with one). With
    ``max_body_lines`` (TOP) the output stops after the header, the blank line and that many body
    lines; `done` then says the rest of the content is not needed.
    """

    def __init__(self, max_body_lines: int | None = None) -> None:
        self.max_body_lines = max_body_lines
        self.in_body = False
        self.body_lines = 0
        self.done = False
        self._partial = b""  # an unfinished line
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        """The POP3 wire bytes for the next chunk of content (complete lines only)."""
        if self.done or not chunk:
            return b""
        data = chunk
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data.endswith(b"\r"):
            data, self._pending_cr = data[:-1], True
        data = self._partial + data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return self._emit(lines)

    def finish(self) -> bytes:
        """The last bytes: an unfinished line, then the terminator."""
        out = b""
        if not self.done and (self._partial or self._pending_cr):
            out = self._emit([self._partial])
        self.done = True
        return out + TERMINATOR

    def _emit(self, lines: list[bytes]) -> bytes:
        out: list[bytes] = []
        for line in lines:
            if self.in_body and self.max_body_lines is not None:
                if self.body_lines >= self.max_body_lines:
                    self.done = True
                    break
                self.body_lines += 1
            elif not line:
                self.in_body = True
            out.append(b"." + line + CRLF if line.startswith(b".") else line + CRLF)
        if self.in_body and self.max_body_lines is not None and self.body_lines >= self.max_body_lines:
            self.done = True
        return b"".join(out)

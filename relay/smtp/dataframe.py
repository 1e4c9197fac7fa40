"""Pure framing of SMTP DATA as it arrives from the client, in arbitrary chunks.

The relay forwards the client's dot-stuffed wire bytes to the upstream unchanged (so the upstream
unstuffs exactly what the client stuffed: byte-exact end to end) and only needs to find the
terminating ``CRLF.CRLF`` and enforce two limits: the message size and the RFC 5321 line length
(998 octets of text + CRLF, plus one stuffing dot on the wire). No I/O; every chunk split is
equivalent, which the unit tests prove.

Against SMTP smuggling (CVE-2023-51764 and kin): any bare LF, and a bare CR next to a dot, is
refused (RFC 5321 2.3.8 allows CR and LF only together as CRLF). Forwarded unchanged, ``\n.\n``,
``\n.\r\n``, ``\r\n.\n`` or ``\r.\r`` could end DATA early at a lenient upstream and let the
rest be read as commands. Other bare CRs (old Mac text) stay allowed, as Postfix allows them. The
chunk holding a refused byte is never forwarded and the caller abandons the upstream transaction.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MAX_LINE_TEXT = 998
"""RFC 5321 4.5.3.1.6: a text line holds at most 998 octets before CRLF."""

_END = b"\r\n.\r\n"
# A line whose text (after an optional stuffing dot, before CRLF) exceeds 998 octets: 998 non-LF
# octets followed by a 999th text octet (anything but CR/LF, or a CR not followed by LF). The
# possessive '?+' stops the dot from being re-counted as text on backtracking.
_TOO_LONG = re.compile(rb"^\.?+[^\n]{%d}(?:[^\r\n]|\r[^\n])" % MAX_LINE_TEXT, re.M)
# A bare CR after a dot (the dot's CR not followed by LF). A trailing CR is held back (see feed), so
# content never ends in CR and the byte before it is never a CR.
_DOT_BARE_CR = re.compile(rb"\.\r[^\n]")
# A piece between LFs of up to 999 bytes is always valid (998 text octets + CR, or a stuffing dot +
# 998 text octets still waiting for its CR); only longer pieces need the exact regex.
_MAX_WIRE_LINE = MAX_LINE_TEXT + 1


def has_bare_line_end(window: bytes) -> bool:
    """True when ``window[1:]`` holds a bare LF, or a bare CR before or after a dot.

    ``window[0]`` is the byte before (already checked; never a CR). Counting and literal searches
    run at C speed; a regex with look-behind would cost more than everything else per byte.
    """
    if window.count(b"\n", 1) != window.count(b"\r\n"):
        return True
    return b"\r." in window or _DOT_BARE_CR.search(window) is not None


class DataProblem(enum.Enum):
    """Why a message is refused after its DATA has been read to the end."""

    TOO_BIG = "too big"
    LINE_TOO_LONG = "line too long"
    BARE_LINE_END = "bare LF, or bare CR next to a dot"


@dataclass
class FeedResult:
    """What one chunk produced: wire bytes to forward, whether DATA ended, bytes after the end."""

    forward: bytes
    done: bool
    leftover: bytes = b""


class DataFramer:
    """Feed client DATA chunks; get the dot-stuffed content to forward and the end of DATA.

    The final ``.CRLF`` is never forwarded (the caller sends its own terminator), the CRLF before it
    is. A possible terminator start (``.`` or ``.\\r`` at a line start) or a trailing CR is held
    back until the next chunk decides. Once a limit is exceeded, nothing more is forwarded but the end
    is still found.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.received_bytes = 0  # content bytes (wire form) seen so far
        self.problem: DataProblem | None = None
        self.done = False
        self._pending = b""  # held back: maybe the start of the terminator
        self._last2 = b"\r\n"  # the two bytes before _pending; DATA's own CRLF at the start
        self._line = b""  # the current unfinished line (< ~1000 bytes), for the length check
        self._prev = b"\n"  # the last content byte accounted (DATA's own CRLF at the start)

    @property
    def ok(self) -> bool:
        """True while no limit has been exceeded."""
        return self.problem is None

    def feed(self, chunk: bytes) -> FeedResult:
        """Consume a chunk of client bytes received after the 354 reply."""
        if self.done:
            raise ValueError("DATA already ended")
        data = self._pending + chunk
        search = self._last2 + data
        idx = search.find(_END)
        if idx != -1:
            content, leftover = data[:idx], data[idx + 3:]
            self.done = True
            self._pending = b""
        else:
            if search.endswith(b"\r\n.\r"):
                hold = 2
            elif search.endswith((b"\r\n.", b"\r")):
                hold = 1  # a lone trailing CR too: only the next byte tells whether it is bare
            else:
                hold = 0
            content, leftover = data[: len(data) - hold], b""
            self._pending = data[len(data) - hold:]
            self._last2 = search[: len(search) - hold][-2:]
        return FeedResult(self._account(content, self._pending[:1]), self.done, leftover)

    def _account(self, content: bytes, lookahead: bytes = b"") -> bytes:
        """Apply the limits to content about to be forwarded; return what may be forwarded.

        ``lookahead`` is the held-back byte that follows ``content`` (it decides a trailing CR).
        """
        self.received_bytes += len(content)
        if self.problem is not None:
            return b""
        if self.received_bytes > self.max_bytes:
            self.problem = DataProblem.TOO_BIG
            return b""
        if content and has_bare_line_end(self._prev + content + lookahead):
            self.problem = DataProblem.BARE_LINE_END
            return b""
        self._prev = content[-1:] or self._prev
        text = self._line + content
        # Cheap pre-check: only when some piece between LFs is longer than any valid line does the
        # exact (slower) regex run.
        if (len(text) > _MAX_WIRE_LINE and max(map(len, text.split(b"\n"))) > _MAX_WIRE_LINE
                and _TOO_LONG.search(text)):
            self.problem = DataProblem.LINE_TOO_LONG
            return b""
        self._line = text[text.rfind(b"\n") + 1:]
        return content

"""Framing of the client's bytes before login: line parts, literals, and what is dropped.

The base of `relay.imap.protocol.ImapProtocol` (which sets the attributes declared here and
answers an overlong line in `_too_long`). A command line part may hold MAX_LINE_OCTETS; an
overlong one is answered once and skipped to its end; a refused non-synchronising literal is read
and dropped up to MAX_DISCARD_OCTETS, beyond that the connection ends with ``* BYE``.
"""

from __future__ import annotations

from relay.imap.events import Reply, State
from relay.imap.syntax import LiteralAnnouncement, String, Token, split_literal, untagged

MAX_LINE_OCTETS = 8192  # one command line part, without CRLF (RFC 7162 section 4 suggests 8000)
MAX_DISCARD_OCTETS = 1024 * 1024  # a refused non-synchronising literal we still read and drop
_TAIL_KEPT = 32  # bytes of a discarded overlong line kept to see a literal announcement at its end


class ImapFraming:
    """Cuts line parts and literals from the buffer; drops refused input."""

    state: State
    _buf: bytearray
    _tokens: list[Token]
    _literal: LiteralAnnouncement | None  # being read after its announcement
    _discarding: bool  # skipping the rest of an overlong line
    _discard_tail: bytes
    _skip: int  # bytes of a refused non-synchronising literal still to drop
    _refused_literal: bool  # a non-synchronising literal of a refused command

    def _too_long(self, head: bytes) -> Reply:
        """The reply to an overlong line starting with ``head`` (the protocol knows the tag)."""
        raise NotImplementedError

    def _next_line(self) -> bytes | Reply | None:
        """Cut the next line part (without CRLF) from the buffer, answer an overlong one."""
        if self._discarding:
            return self._discard_line()
        end = self._buf.find(b"\n")
        if end < 0:
            content = len(self._buf) - (1 if self._buf.endswith(b"\r") else 0)
            if content > MAX_LINE_OCTETS:
                reply = self._too_long(bytes(self._buf[:64]))
                self._discard_tail = bytes(self._buf[-_TAIL_KEPT:])
                self._buf.clear()
                self._discarding = True
                return reply
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE_OCTETS:
            reply = self._too_long(line[:64])
            return self._line_skipped(line[-_TAIL_KEPT:]) or reply
        return line

    def _line_skipped(self, tail: bytes) -> Reply | None:
        """A refused line ended with ``tail``: drop a non-synchronising literal announced there
        (the client sends it without waiting) and the rest of the command after it."""
        _text, literal = split_literal(tail)
        if literal is None or literal.synchronising:
            return None
        if literal.size > MAX_DISCARD_OCTETS:
            return self._bye_too_big()
        self._skip = literal.size
        self._refused_literal = True
        return None

    def _discard_line(self) -> Reply | None:
        end = self._buf.find(b"\n")
        if end < 0:
            self._discard_tail = (self._discard_tail + bytes(self._buf[-_TAIL_KEPT:]))[-_TAIL_KEPT:]
            self._buf.clear()
            return None
        tail = (self._discard_tail + bytes(self._buf[:end]))[-_TAIL_KEPT:].rstrip(b"\r")
        del self._buf[: end + 1]
        self._discarding = False
        self._discard_tail = b""
        return self._line_skipped(tail)

    def _drop_skipped(self) -> bool:
        """Drop bytes of a refused non-synchronising literal; True when all are gone."""
        count = min(self._skip, len(self._buf))
        del self._buf[:count]
        self._skip -= count
        if self._skip:
            return False
        if self._refused_literal:
            # The rest of that command's line follows the literal; skip it too.
            self._discarding = True
            self._discard_tail = b""
            self._refused_literal = False
        return True

    def _read_literal(self) -> bool:
        literal = self._literal
        assert literal is not None
        if len(self._buf) < literal.size:
            return False
        self._tokens.append(String(bytes(self._buf[: literal.size])))
        del self._buf[: literal.size]
        self._literal = None
        return True

    def _bye_too_big(self) -> Reply:
        self.state = State.CLOSED
        self._buf.clear()
        return Reply(untagged("BYE [TOOBIG] Literal too large; closing the connection"), close=True)

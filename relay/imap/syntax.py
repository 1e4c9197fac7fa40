"""Pure IMAP syntax helpers (RFC 3501 / RFC 9051 section 9): tokens, literals, replies.

No I/O here. The relay parses only what it must before login (tags, command names, astrings,
the ID parameter list); everything after login passes through as bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CRLF = b"\r\n"
# A literal announcement at the end of a command line: {n} (synchronising) or {n+} (RFC 7888).
_LITERAL_AT_END = re.compile(rb"\{([0-9]{1,20})(\+?)\}$")
# Bytes outside ASTRING-CHAR (RFC 9051 section 9: atom-specials minus "]"): ( ) { SP CTL % * " \.
# A tag is 1*<any ASTRING-CHAR except "+">.
_ATOM_EXCLUDED = frozenset(b'(){ %*"\\') | frozenset(range(0x20)) | {0x7F}
_TAG_EXCLUDED = _ATOM_EXCLUDED | {ord("+")}
_QUOTED_ESCAPABLE = frozenset(b'"\\')


class ImapSyntaxError(ValueError):
    """The client's command is not valid IMAP syntax; the text goes into a BAD reply."""


@dataclass(frozen=True)
class Atom:
    """An atom (also NIL and command names), as raw ASCII bytes."""

    value: bytes


@dataclass(frozen=True)
class String:
    """A quoted string or a literal (both are IMAP strings), unescaped raw bytes."""

    value: bytes


@dataclass(frozen=True)
class Paren:
    """An opening or closing parenthesis of a list."""

    open: bool


Token = Atom | String | Paren


@dataclass(frozen=True)
class LiteralAnnouncement:
    """``{size}`` or ``{size+}`` ending a command line; the bytes follow after CRLF."""

    size: int
    synchronising: bool


def split_literal(line: bytes) -> tuple[bytes, LiteralAnnouncement | None]:
    """Split a command line (without CRLF) into its text and a trailing literal announcement."""
    match = _LITERAL_AT_END.search(line)
    if match is None:
        return line, None
    return line[: match.start()], LiteralAnnouncement(int(match.group(1)), match.group(2) != b"+")


def is_valid_tag(value: bytes) -> bool:
    """True for a syntactically valid command tag (ASCII ASTRING-CHARs except "+")."""
    return bool(value) and all(b < 0x80 and b not in _TAG_EXCLUDED for b in value)


def tokenize(text: bytes) -> list[Token]:
    """Split command text (no CRLF, no trailing literal announcement) into tokens.

    Raises ImapSyntaxError for an unterminated quoted string, a bad escape, NUL/CR/LF or a
    character that may not appear in an atom.
    """
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        byte = text[i]
        if byte == 0x20:
            i += 1
        elif byte in (0x28, 0x29):  # ( )
            tokens.append(Paren(byte == 0x28))
            i += 1
        elif byte == 0x22:  # "
            value, i = _quoted(text, i + 1)
            tokens.append(String(value))
        else:
            start = i
            while i < n and text[i] not in (0x20, 0x28, 0x29):
                if text[i] in _ATOM_EXCLUDED:
                    raise ImapSyntaxError(f"Invalid character {chr(text[i])!r} in an atom")
                i += 1
            tokens.append(Atom(text[start:i]))
    return tokens


def _quoted(text: bytes, i: int) -> tuple[bytes, int]:
    out = bytearray()
    while i < len(text):
        byte = text[i]
        if byte == 0x22:
            return bytes(out), i + 1
        if byte == 0x5C:  # backslash
            if i + 1 >= len(text) or text[i + 1] not in _QUOTED_ESCAPABLE:
                raise ImapSyntaxError("Invalid escape in a quoted string (only \\\\ and \\\")")
            out.append(text[i + 1])
            i += 2
            continue
        if byte in (0x00, 0x0A, 0x0D):
            raise ImapSyntaxError("NUL, CR or LF in a quoted string")
        out.append(byte)
        i += 1
    raise ImapSyntaxError("Unterminated quoted string")


def astring(token: Token, what: str) -> str:
    """Return an astring argument (atom, quoted string or literal) as text."""
    if isinstance(token, Paren):
        raise ImapSyntaxError(f"{what} must be an atom or a string")
    try:
        return token.value.decode("utf-8")
    except UnicodeDecodeError:
        raise ImapSyntaxError(f"{what} is not valid UTF-8") from None


def quote(text: str) -> bytes:
    """Render ``text`` as an IMAP quoted string."""
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def tagged(tag: bytes, status: str, text: str, code: str | None = None) -> bytes:
    """A tagged status reply ``tag OK|NO|BAD [code] text``."""
    prefix = f"[{code}] " if code else ""
    return tag + f" {status} {prefix}{text}".encode() + CRLF


def untagged(text: str) -> bytes:
    """An untagged reply line ``* text``."""
    return f"* {text}".encode() + CRLF

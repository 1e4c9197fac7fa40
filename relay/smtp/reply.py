"""Pure SMTP reply handling: parse upstream replies, render them for the client, read EHLO.

No I/O. An upstream reply is parsed line by line into an immutable `SmtpReply`; rendering it gives
the client the upstream's code, enhanced status code (RFC 3463) and text unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.errors import UpstreamProtocolError, UpstreamReply

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?= |$)")
MAX_REPLY_LINES = 200
"""A reply with more lines than this is treated as a protocol error (a runaway server)."""
MAX_REMEMBERED_REPLIES = 256
"""One-line replies kept parsed (`ReplyParser.feed_line`); the table starts over when full."""


@dataclass(frozen=True)
class SmtpReply:
    """One SMTP reply: ``code``, optional ``enhanced_code`` (``"5.7.60"``) and its text lines.

    ``text_lines`` hold each line's text without the code and without the enhanced code.
    """

    code: int
    enhanced_code: str | None = None
    text_lines: tuple[str, ...] = ("",)

    @classmethod
    def make(cls, code: int, enhanced_code: str | None, *text_lines: str) -> SmtpReply:
        """Build a reply the relay itself sends (``SmtpReply.make(454, "4.7.0", "...")``)."""
        return cls(code, enhanced_code, tuple(text_lines) or ("",))

    @property
    def text(self) -> str:
        """All text lines joined by a space (for logs and exception messages)."""
        return " ".join(line for line in self.text_lines if line)

    @property
    def is_positive(self) -> bool:
        """2xx: the command succeeded."""
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        """4xx: try again later."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5xx: do not retry unchanged."""
        return self.code >= 500

    @property
    def wire(self) -> str:
        """`render`, computed once per reply (the relay's own replies are shared constants).

        Cached in the instance dict by hand: functools.cached_property takes a lock per first
        access on Python 3.11, which costs more than rendering a one-line upstream reply."""
        wire = self.__dict__.get("_wire")
        if wire is None:
            wire = self.__dict__["_wire"] = self.render()
        return wire

    def as_upstream_reply(self) -> UpstreamReply:
        """This reply as the protocol-neutral value carried by `relay.errors.UpstreamError`."""
        return UpstreamReply(str(self.code), self.enhanced_code, self.text)

    def render(self) -> str:
        """Return the reply as wire text without the final CRLF (lines joined by CRLF)."""
        out = []
        last = len(self.text_lines) - 1
        for i, line in enumerate(self.text_lines):
            sep = " " if i == last else "-"
            parts = [p for p in (self.enhanced_code, line) if p]
            out.append(f"{self.code}{sep}{' '.join(parts)}".rstrip() if parts else f"{self.code}{sep}")
        return "\r\n".join(out)

    def one_line(self) -> str:
        """The reply on one line, for log messages."""
        enhanced = f" {self.enhanced_code}" if self.enhanced_code else ""
        return f"{self.code}{enhanced} {self.text}".rstrip()

    def __str__(self) -> str:
        return self.one_line()


_ONE_LINE_REPLIES: dict[bytes, SmtpReply] = {}  # raw line -> its reply (SmtpReply is immutable)


@dataclass
class ReplyParser:
    """Incremental parser: feed reply lines (bytes, CRLF optional) until a `SmtpReply` comes out."""

    _code: int | None = None
    _lines: list[str] = field(default_factory=list)

    def feed_line(self, raw: bytes) -> SmtpReply | None:
        """Consume one line; return the reply when it was the last line, else None.

        Raises UpstreamProtocolError on a malformed line or a code that changes mid-reply. A
        one-line reply seen before (``250 2.1.0 Sender OK``: an upstream repeats the same few per
        message) comes from `_ONE_LINE_REPLIES`, already parsed and rendered.
        """
        if self._code is None:
            known = _ONE_LINE_REPLIES.get(raw)
            if known is not None:
                return known
        line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        # isascii(): str.isdigit() also accepts digits like '¹' that int() refuses.
        if len(line) < 3 or not (line[:3].isascii() and line[:3].isdigit()) or line[0] not in "2345":
            raise UpstreamProtocolError(f"malformed SMTP reply line: {line[:80]!r}")
        if len(line) > 3 and line[3] not in " -":
            raise UpstreamProtocolError(f"malformed SMTP reply line: {line[:80]!r}")
        code = int(line[:3])
        if self._code is not None and code != self._code:
            raise UpstreamProtocolError(f"SMTP reply code changed mid-reply: {self._code} then {code}")
        self._code = code
        self._lines.append(line[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            raise UpstreamProtocolError(f"SMTP reply longer than {MAX_REPLY_LINES} lines")
        if len(line) > 3 and line[3] == "-":
            return None
        reply = build_reply(code, self._lines)
        if len(self._lines) == 1:
            if len(_ONE_LINE_REPLIES) >= MAX_REMEMBERED_REPLIES:
                _ONE_LINE_REPLIES.clear()  # unique texts (queue ids) must not grow it forever
            _ONE_LINE_REPLIES[raw] = reply
        self._code = None
        self._lines = []
        return reply


def build_reply(code: int, texts: list[str]) -> SmtpReply:
    """Split the enhanced status code (if the first line has one matching the code class) off."""
    match = _ENHANCED.match(texts[0]) if texts else None
    enhanced = None
    if match and int(match.group(1)) == code // 100:
        enhanced = match.group(0)
    if enhanced is None:
        return SmtpReply(code, None, tuple(texts) or ("",))
    stripped = []
    for text in texts:
        has_code = text == enhanced or text.startswith(enhanced + " ")
        stripped.append(text[len(enhanced) + 1:] if has_code else text)
    return SmtpReply(code, enhanced, tuple(stripped))


def parse_reply(data: bytes) -> SmtpReply:
    """Parse one complete reply given as bytes (CRLF-separated lines)."""
    parser = ReplyParser()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, line in enumerate(lines):
        reply = parser.feed_line(line)
        if reply is not None:
            if i != len(lines) - 1:
                raise UpstreamProtocolError("data after the last line of an SMTP reply")
            return reply
    raise UpstreamProtocolError("incomplete SMTP reply")


@dataclass(frozen=True)
class EhloCapabilities:
    """What an upstream offers in its EHLO reply."""

    size: int | None = None  # SIZE limit; 0 means "no fixed limit", None means SIZE not offered
    eight_bit_mime: bool = False
    smtputf8: bool = False
    starttls: bool = False
    pipelining: bool = False
    chunking: bool = False  # RFC 3030 BDAT
    auth_mechanisms: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, reply: SmtpReply) -> EhloCapabilities:
        """Read the extension lines (all but the first, which is the greeting) of an EHLO reply."""
        size: int | None = None
        auth: set[str] = set()
        keywords: set[str] = set()
        for line in reply.text_lines[1:]:
            words = line.replace("=", " ").split()
            if not words:
                continue
            keyword = words[0].upper()
            keywords.add(keyword)
            if keyword == "SIZE":
                size = int(words[1]) if len(words) > 1 and words[1].isascii() and words[1].isdigit() else 0
            elif keyword == "AUTH":
                auth.update(w.upper() for w in words[1:])
        # Some old servers also offer "AUTH=LOGIN PLAIN", caught by the '=' replacement above.
        return cls(
            size=size,
            eight_bit_mime="8BITMIME" in keywords,
            smtputf8="SMTPUTF8" in keywords,
            starttls="STARTTLS" in keywords,
            pipelining="PIPELINING" in keywords,
            chunking="CHUNKING" in keywords,
            auth_mechanisms=frozenset(auth),
            keywords=frozenset(keywords),
        )

    def effective_size_limit(self, own_limit: int) -> int:
        """The lower of our own limit and the upstream's SIZE (when it announced a fixed one)."""
        if self.size:
            return min(own_limit, self.size)
        return own_limit

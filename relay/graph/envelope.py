"""Pure: make a message's header recipients equal its SMTP envelope, for Graph's MIME sendMail.

Graph has no envelope: it sends to the To, Cc and Bcc addresses of the MIME headers
(PROTOCOLS.md 9.1). So a recipient given only by RCPT TO (a Bcc the client kept out of the
headers, a list member) is added to a ``Bcc:`` field, and the rest of the message is left byte
for byte as the client sent it. A header address the client did not RCPT would receive the mail
although the client did not ask for it: such a message is refused, never silently widened.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import getaddresses

from relay.smtp.reply import SmtpReply

RECIPIENT_FIELDS = frozenset({b"to", b"cc", b"bcc"})


@dataclass(frozen=True, slots=True)
class Field:
    """One header field: its lower-case name and its byte span (folded lines, final CRLF included)."""

    name: bytes
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Enveloped:
    """The message to send (``mime``) and the addresses added as Bcc; or ``refusal``."""

    mime: bytes = b""
    added_bcc: tuple[str, ...] = ()
    refusal: SmtpReply | None = None


def header_end(mime: bytes) -> int:
    """Offset just after the header block's last CRLF (before the empty line); the whole message
    when it has no body."""
    if mime.startswith(b"\r\n"):
        return 0
    blank = mime.find(b"\r\n\r\n")
    return len(mime) if blank < 0 else blank + 2


def header_fields(mime: bytes) -> list[Field]:
    """The fields of the header block, folded continuation lines included in their field."""
    fields: list[Field] = []
    end = header_end(mime)
    pos = 0
    while pos < end:
        nl = mime.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if mime[pos:pos + 1] in (b" ", b"\t") and fields:
            last = fields[-1]
            fields[-1] = Field(last.name, last.start, line_end)
        else:
            name = mime[pos:line_end].split(b":", 1)[0].strip().lower()
            fields.append(Field(name, pos, line_end))
        pos = line_end
    return fields


def field_addresses(mime: bytes, field: Field) -> list[str]:
    """The addresses of an address field (display names and groups handled by `email.utils`)."""
    raw = mime[field.start:field.end].split(b":", 1)
    if len(raw) < 2:
        return []
    value = raw[1].decode("utf-8", "replace").replace("\r\n", "").replace("\n", "")
    return [addr for _, addr in getaddresses([value]) if "@" in addr]


def header_recipients(mime: bytes) -> list[str]:
    """Every To/Cc/Bcc address of the message, in order."""
    out: list[str] = []
    for field in header_fields(mime):
        if field.name in RECIPIENT_FIELDS:
            out.extend(field_addresses(mime, field))
    return out


def _bcc_value(addresses: list[str]) -> bytes:
    """Addresses folded one per line (no line over 998 octets however many there are)."""
    return ",\r\n ".join(addresses).encode("ascii", "backslashreplace")


def envelope_into_headers(mime: bytes, recipients: list[str]) -> Enveloped:
    """The message with envelope-only recipients added as Bcc, or the refusal (see module doc)."""
    in_headers = {addr.lower() for addr in header_recipients(mime)}
    wanted = {addr.lower() for addr in recipients}
    extra = sorted(in_headers - wanted)
    if extra:
        shown = ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        return Enveloped(refusal=SmtpReply.make(
            554, "5.7.0", f"Header recipients not among RCPT TO: {shown}; Microsoft Graph would "
            "deliver to them too: RCPT every To/Cc/Bcc address of the message"))
    missing: list[str] = []
    for addr in recipients:
        if addr.lower() not in in_headers and addr.lower() not in {m.lower() for m in missing}:
            missing.append(addr)
    if not missing:
        return Enveloped(mime)
    bcc = next((f for f in header_fields(mime) if f.name == b"bcc"), None)
    if bcc is not None:  # one Bcc field only (RFC 5322 3.6): extend the client's
        body_end = bcc.end - (2 if mime[:bcc.end].endswith(b"\r\n") else 0)
        sep = b",\r\n " if field_addresses(mime, bcc) else b" "
        return Enveloped(mime[:body_end] + sep + _bcc_value(missing) + mime[body_end:], tuple(missing))
    at = header_end(mime)
    line = b"Bcc: " + _bcc_value(missing) + b"\r\n"
    if at == len(mime) and mime and not mime.endswith(b"\r\n"):
        line = b"\r\n" + line
    return Enveloped(mime[:at] + line + mime[at:], tuple(missing))

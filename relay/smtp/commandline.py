"""Checked SMTP command lines for the upstream (pure): no CR, LF or other control character
from a client's argument may reach the upstream as a second command."""

from __future__ import annotations

import re
from collections.abc import Iterable

from relay.errors import ProtocolInputError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def command_line(line: str, *, sensitive: bool = False) -> bytes:
    """``line`` + CRLF as bytes; ProtocolInputError if it holds a control character (CR, LF ...)."""
    if _CONTROL.search(line):
        what = "credentials" if sensitive else repr(line[:60])
        raise ProtocolInputError(f"control character in SMTP command {what}")
    try:
        return line.encode("utf-8") + b"\r\n"
    except UnicodeEncodeError:  # undecodable client bytes (aiosmtpd keeps them as surrogates)
        raise ProtocolInputError("SMTP command argument is not valid UTF-8") from None


def mail_command(address: str, params: Iterable[str] = ()) -> bytes:
    """The checked ``MAIL FROM:<address> [params]`` line."""
    extra = "".join([f" {p}" for p in params]) if params else ""
    return command_line(f"MAIL FROM:<{address}>{extra}")


def rcpt_command(address: str) -> bytes:
    """The checked ``RCPT TO:<address>`` line."""
    return command_line(f"RCPT TO:<{address}>")

"""Log output for the relay: human-readable text or one JSON object per line, always redacted.

`Secret` already prints as ``***``; the `RedactingFilter` is defence in depth for values that
reach a log line some other way (an exception text quoting an HTTP body, a protocol line). It
scrubs anything shaped like a bearer token, an XOAUTH2/OAUTHBEARER/PLAIN blob, a JWT or a
``access_token``/``refresh_token``/``client_secret``/``password`` value, plus every exact value
registered with `register_secret` (the token manager and the config loader may register theirs).

The text format escapes control characters (ESC, CR, NUL ...) and indents the lines after a
newline, so client input can neither repaint a terminal nor forge a log record. aiosmtpd's own
``mail.log`` lines that can echo a client line (an AUTH LOGIN exchange out of step sends the
base64 password as a "command") are masked by `AiosmtpdLineMask`, installed on import.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

from relay.secret import Secret

LogFormat = Literal["text", "json"]
MASK = "***"
# Shorter registered values would mask ordinary words; real secrets are much longer.
MIN_REGISTERED_CHARS = 6
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_KEY_NAMES = (r"access_token|refresh_token|id_token|client_secret|password|passwd|assertion"
              r"|code_verifier|device_code|RELAY_STORE_KEY")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # key=value, key: value, "key": "value" (JSON, form bodies, URLs, reprs)
    (re.compile(rf"(?i)(\b(?:{_KEY_NAMES})\b[\"']?\s*[:=]\s*[\"']?)[^\"'\s&,;}})\]]+"), rf"\1{MASK}"),
    # Authorization headers and the XOAUTH2 "auth=Bearer <token>" part
    (re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\1{MASK}"),
    # SASL initial responses on a command line: AUTH XOAUTH2 <b64>, AUTH PLAIN <b64>
    (re.compile(r"(?i)(\bAUTH\s+(?:XOAUTH2|OAUTHBEARER|PLAIN|LOGIN)\s+)\S+"), rf"\1{MASK}"),
    # bare base64 of "user=..." (XOAUTH2) and "n,a=..." (OAUTHBEARER) blobs
    (re.compile(r"\b(?:dXNlcj[0-3]|bixhP[Q-f])[A-Za-z0-9+/]{8,}=*"), MASK),
    # JWTs (id tokens, Microsoft access tokens, service-account assertions)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), MASK),
)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# aiosmtpd commands whose arguments are useful and never a credential.
_SHOWN_SMTP_LINES = re.compile(rb"(?i)(?:EHLO|HELO|MAIL|RCPT|DATA|RSET|NOOP|QUIT|STARTTLS|BDAT|VRFY|HELP)\b")

_CRLF = b"\r\n"
_ECHOED_COMMAND = re.compile(rb'command ".*" not recognized')


def escape_controls(text: str) -> str:
    """Escape control characters as ``\\xNN``; indent the lines after each newline."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text).replace("\n", "\n  ")


class TextFormatter(logging.Formatter):
    """The text format, with control characters of the message escaped (see the module docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Escape the rendered message, then format as usual."""
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class AiosmtpdLineMask(logging.Filter):
    """On the ``mail.log`` logger: replace client lines that may hold a credential by their length.

    "unrecognised: <command>" always (the "command" may be an upper-cased base64 password);
    ``>>`` lines unless they start with a command that carries no credential (EHLO, MAIL, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask in place; never drops a record."""
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        last = args[-1]
        if record.msg == "%r unrecognised: %s" and isinstance(last, str):
            last = f"<{len(last)} chars>"
        elif (record.msg in ("%r >> %r", "_handle_client readline: %r") and isinstance(last, bytes)
              and not _SHOWN_SMTP_LINES.match(last)):
            last = f"<{len(last.rstrip(_CRLF))} bytes>"
        elif record.msg == "%r << %r" and isinstance(last, bytes):
            last = _ECHOED_COMMAND.sub(b'command "..." not recognized', last)
        record.args = (*args[:-1], last)
        return True


def install_aiosmtpd_mask() -> None:
    """Install `AiosmtpdLineMask` on ``mail.log`` once (idempotent)."""
    mail_log = logging.getLogger("mail.log")
    if not any(isinstance(f, AiosmtpdLineMask) for f in mail_log.filters):
        mail_log.addFilter(AiosmtpdLineMask())


install_aiosmtpd_mask()


class SecretRegistry:
    """Exact secret values to mask wherever they appear in a log record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()

    def add(self, value: str | Secret | None) -> None:
        """Remember ``value`` (ignored when empty or too short to mask safely)."""
        text = value.reveal() if isinstance(value, Secret) else value
        if not text or len(text) < MIN_REGISTERED_CHARS:
            return
        with self._lock:
            self._values = self._values | {text}

    def values(self) -> frozenset[str]:
        """The registered values (a snapshot)."""
        return self._values


_REGISTRY = SecretRegistry()


def register_secret(value: str | Secret | None) -> None:
    """Mask this exact value in every later log record of the process."""
    _REGISTRY.add(value)


def redact(text: str, registered: Iterable[str] | None = None) -> str:
    """Return ``text`` with secret-looking values and registered secrets replaced by ``***``."""
    values = _REGISTRY.values() if registered is None else registered
    # Longest first, so a secret that contains another one is masked whole.
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message, arguments, exception and stack text through `redact`."""

    _exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place; never drops a record."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep the raw parts, redacted
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            # Formatter.format() would re-render exc_info if exc_text were empty; it is not.
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, extra fields, exc (when any)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single JSON line."""
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            plain = isinstance(value, int | float | bool) or value is None
            entry[key] = value if plain else redact(str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


class _RelayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so calling it again replaces it."""


def configure_logging(level: str | int = "INFO", fmt: LogFormat = "text",
                      stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in ``fmt``, redacted; return the handler."""
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _RelayHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Third-party chatter that would print request URLs (with codes) at INFO.
    for noisy in ("httpx", "httpcore", "mail.log", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level`` and ``--log-format`` to an argparse parser."""
    add = parser.add_argument
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper, help="minimum level to log (INFO)")
    add("--log-format", default="text", choices=["text", "json"],
        help="text for people (default), json for log collectors (one object per line)")

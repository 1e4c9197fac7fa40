"""Unit tests for relay.logging_setup: formats and the redaction filter."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest

from relay.logging_setup import configure_logging, redact, register_secret
from relay.secret import Secret

XOAUTH2_BLOB = base64.b64encode(b"user=sales@contoso.com\x01auth=Bearer EwBgA8l6BAAU7p9QDpi\x01\x01").decode()
OAUTHBEARER_BLOB = base64.b64encode(b"n,a=sales@contoso.com,\x01host=h\x01auth=Bearer tok\x01\x01").decode()
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sifQ.c2lnbmF0dXJlLXBhcnQ"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Route logging into a buffer through configure_logging; restore the root logger after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    handler = configure_logging("DEBUG", "text", stream=out)
    yield out
    root.removeHandler(handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize(("text", "secret"), [
    ("POST body access_token=AT-123456&expires_in=3600", "AT-123456"),
    ('{"refresh_token": "RT-abcdef", "scope": "mail"}', "RT-abcdef"),
    ("client_secret='cs-value-9'", "cs-value-9"),
    ("login failed password=hunter2!", "hunter2!"),
    ("Authorization: Bearer ya29.a0AfH6SMB", "ya29.a0AfH6SMB"),
    ("C: AUTH XOAUTH2 " + XOAUTH2_BLOB, XOAUTH2_BLOB),
    ("C: AUTH PLAIN AHNhbGVzAGh1bnRlcjI=", "AHNhbGVzAGh1bnRlcjI="),
    ("upstream got " + XOAUTH2_BLOB + " back", XOAUTH2_BLOB),
    ("sent " + OAUTHBEARER_BLOB, OAUTHBEARER_BLOB),
    ("id token " + JWT, JWT),
    ("user=a@b\x01auth=Bearer tok-xyz-123\x01\x01", "tok-xyz-123"),
])
def test_redact_masks_secret_shapes(text: str, secret: str) -> None:
    """Each secret-looking value is replaced by *** and the text around it survives."""
    out = redact(text, registered=())
    assert secret not in out
    assert "***" in out


@pytest.mark.parametrize("text", [
    "smtp: listening on 127.0.0.1:2525 (tls: none)",
    "account 'sales': token refreshed, valid until 2030-01-01T00:00:00+00:00",
    "550 5.1.1 <nobody@example.com>: Recipient address rejected",
    "run `relay authorize sales` (needs authorize)",
])
def test_redact_leaves_ordinary_lines_alone(text: str) -> None:
    """Operational lines without secrets pass through unchanged."""
    assert redact(text, registered=()) == text


def test_registered_secret_masked_in_message_args_and_exception(captured: io.StringIO) -> None:
    """A registered exact value is masked in the message, its %-args and the traceback text."""
    value = "opaque-provider-token-7f3a9c"
    register_secret(Secret(value))
    log = logging.getLogger("relay.test")
    log.info("got %s from upstream", value)
    try:
        raise RuntimeError(f"HTTP 400 body mentions {value}")
    except RuntimeError:
        log.exception("refresh failed")
    log.warning("stack", stack_info=True, extra={"detail": value})
    out = captured.getvalue()
    assert value not in out
    assert "got *** from upstream" in out
    assert "HTTP 400 body mentions ***" in out


def test_short_registered_values_are_ignored() -> None:
    """Values too short to be secrets are not registered (they would mask ordinary words)."""
    register_secret("abc")
    register_secret(None)
    assert redact("abc def", registered=None) == "abc def"


def test_json_format_one_object_per_line_redacted() -> None:
    """--log-format json writes one parseable object per line with level, logger and message."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    handler = configure_logging("info", "json", stream=out)
    try:
        log = logging.getLogger("relay.app")
        log.info("listener %s on port %d", "smtp", 2525)
        log.debug("hidden at INFO")
        try:
            raise ValueError("refresh_token=RT-secret-1\nsecond line")
        except ValueError:
            log.error("multi\nline access_token=AT-secret-2", exc_info=True, extra={"account": "sales"})
    finally:
        root.removeHandler(handler)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "listener smtp on port 2525"
    assert first["level"] == "INFO" and first["logger"] == "relay.app" and first["ts"].endswith("+00:00")
    assert second["account"] == "sales"
    assert "RT-secret-1" not in lines[1] and "AT-secret-2" not in lines[1]
    assert "Traceback" in second["exc"]


def test_configure_logging_twice_keeps_one_handler() -> None:
    """Calling configure_logging again replaces its handler instead of doubling every line."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging("INFO", "text", stream=first)
        handler = configure_logging("INFO", "text", stream=second)
        logging.getLogger("relay.x").info("once")
        root.removeHandler(handler)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_unknown_format_is_refused() -> None:
    """A format other than text/json is a ValueError, not a silent default."""
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]


def test_text_format_escapes_control_characters(captured: io.StringIO) -> None:
    """Issue 22 item 7: ESC and CR from client input cannot repaint a terminal or forge a line;
    a newline inside a message is indented so it never starts a record of its own."""
    logging.getLogger("relay.test").warning("user %s done", "evil\x1b[2J\rFAKE\x00\x7f")
    logging.getLogger("relay.test").warning("first\n2026-01-01 00:00:00 ERROR forged")
    out = captured.getvalue()
    assert "\x1b" not in out and "\r" not in out and "\x00" not in out and "\x7f" not in out
    assert "evil\\x1b[2J\\x0dFAKE\\x00\\x7f" in out
    assert "\n  2026-01-01 00:00:00 ERROR forged" in out


def test_aiosmtpd_unrecognised_command_line_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 22 item 7: aiosmtpd's "unrecognised" WARNING and its ">>" lines may carry a base64
    password (an AUTH LOGIN exchange out of step); the masking filter leaves only a length."""
    import relay.logging_setup  # noqa: F401 - installs the mail.log filter

    caplog.set_level(logging.DEBUG, logger="mail.log")
    password_b64 = base64.b64encode(b"S3cret-Pass!").decode()
    mail_log = logging.getLogger("mail.log")
    mail_log.warning("%r unrecognised: %s", ("127.0.0.1", 5), password_b64.upper())
    mail_log.info("%r >> %r", ("127.0.0.1", 5), password_b64.encode())
    mail_log.info("%r >> %r", ("127.0.0.1", 5), b"MAIL FROM:<a@example.com>")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert password_b64 not in text and password_b64.upper() not in text
    assert "unrecognised: <16 chars>" in text
    assert "MAIL FROM:<a@example.com>" in text

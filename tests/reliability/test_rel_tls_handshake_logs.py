"""Issue 22 item 14: a client failing the TLS handshake is the client's problem: one INFO line,
no ERROR, no traceback (implicit TLS and STARTTLS/STLS, SMTP and POP3), and no connection slot
kept for it."""

from __future__ import annotations

import logging
import socket

import pytest
from support.app_harness import wait_until

from relay.config.model import ListenerConfig
from relay.tlsutil import generate_self_signed

from .conftest import TIMEOUT_S, Raw


def _junk_handshake(port: int, greeting: bytes | None = None, upgrade: bytes | None = None) -> None:
    """Connect, optionally upgrade with ``upgrade`` after reading ``greeting``, send non-TLS junk."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    try:
        if upgrade is not None:
            raw = Raw.__new__(Raw)
            raw.sock, raw.buffer = sock, b""
            raw.line() if greeting == b"+OK" else raw.smtp_reply()
            if greeting != b"+OK":
                raw.smtp("EHLO junk.test")
            sock.sendall(upgrade + b"\r\n")
            raw.line()
        sock.sendall(b"\x16\x03\x01\x00\x05hello this is not TLS\r\n" * 4)
        sock.settimeout(TIMEOUT_S)
        while sock.recv(4096):
            pass
    except OSError:
        pass
    finally:
        sock.close()


@pytest.mark.parametrize(("listener", "tls"), [("smtp", "implicit"), ("smtp", "starttls"),
                                                ("pop3", "implicit"), ("pop3", "starttls")])
def test_failed_tls_handshake_is_logged_at_info_without_traceback(rel_relay, tmp_path, caplog,
                                                                  listener, tls):
    """A junk ClientHello gives at most INFO lines: no ERROR/WARNING record, no traceback."""
    caplog.set_level(logging.DEBUG)
    cert, key = generate_self_signed(tmp_path / "cert")
    conf = ListenerConfig(True, "127.0.0.1", 0, tls=tls, cert_file=cert, key_file=key)
    relay = rel_relay(**{f"{listener}_listener": conf})
    port = relay.smtp_port if listener == "smtp" else relay.pop3_port
    upgrade = None if tls == "implicit" else (b"STARTTLS" if listener == "smtp" else b"STLS")
    _junk_handshake(port, b"+OK" if listener == "pop3" else None, upgrade)
    if listener == "smtp":  # the failed connection must not keep a connection slot
        wait_until(lambda: relay.smtp_server.active_sessions == 0, 10,
                   "the failed connection to give its slot back")
    relay.stop()
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [(r.name, r.levelname, r.getMessage()) for r in bad]
    if tls == "starttls":  # implicit TLS fails inside the event loop, before any relay code runs
        assert any("TLS handshake" in r.getMessage() and r.levelno == logging.INFO
                   for r in caplog.records)

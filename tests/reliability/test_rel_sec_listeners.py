"""Security: listener bind defaults, the plaintext AUTH rule off loopback, verify_tls warnings.

A listener bound to 0.0.0.0 is not a loopback listener, so connecting to it via 127.0.0.1 exercises
the real off-loopback rule of LocalAuthenticator without needing another interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import poplib
import smtplib
import ssl
from pathlib import Path

import pytest
import yaml

from relay.app import RelayApp
from relay.config.model import ListenerConfig, UpstreamEndpoint
from relay.configuration import load_config
from relay.localauth import LocalAuthenticator
from relay.passwords import hash_password
from relay.sasl import encode_plain
from relay.tlsutil import generate_self_signed
from relay.tokens.store import generate_key

from .conftest import PASSWORD, TIMEOUT_S, USERNAME, Raw

LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")


async def _refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_listeners_bind_127_0_0_1_by_default(tmp_path: Path):
    """A config whose listen section names no host: RelayApp binds both listeners to 127.0.0.1 only
    (127.0.0.2 is refused)."""
    key_file = tmp_path / "store.key"
    key_file.write_text(generate_key() + "\n")
    key_file.chmod(0o600)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump({
        "listen": {"smtp": {"port": 0}, "pop3": {"port": 0}},  # any free port; the host is the default
        "token_store": {"path": str(tmp_path / "tokens.enc"), "key_env": None, "key_file": str(key_file)},
        "credentials": {"c": {"provider": "generic", "client_id": "x", "token_url": "https://t.example/token",
                              "authorize_url": "https://t.example/authorize"}},
        "accounts": {"a": {"username": "u", "password_hash": hash_password("p", log2_n=4),
                           "mailbox": "a@example.com", "credentials": "c",
                           "smtp": {"host": "smtp.example.com", "port": 587, "tls": "starttls"},
                           "pop3": False}},
    }))
    path.chmod(0o600)
    config = load_config(path, env={})
    assert config.listen.smtp.host == "127.0.0.1" and config.listen.pop3.host == "127.0.0.1"
    app = RelayApp(config)
    await app.start()
    try:
        for name in ("smtp", "pop3"):
            server = app.listener(name)
            sockets = server._server.sockets  # type: ignore[attr-defined]
            assert [s.getsockname()[0] for s in sockets] == ["127.0.0.1"]
            assert await _refused("127.0.0.2", server.port)  # type: ignore[attr-defined]
    finally:
        await app.stop(1)


def _smtp_login_refused(port: int) -> None:
    raw = Raw(port)
    try:
        assert raw.smtp_reply().startswith("220")
        ehlo = raw.smtp("EHLO off-loopback.test")
        assert ehlo.startswith("250") and "AUTH" not in ehlo
        assert raw.smtp(f"AUTH PLAIN {encode_plain(USERNAME, PASSWORD)}").startswith("538 5.7.11")
        assert raw.smtp("AUTH LOGIN").startswith("538 5.7.11")
        assert raw.smtp("MAIL FROM:<a@x.test>").startswith("530")
    finally:
        raw.close()


def _pop3_login_refused(port: int) -> None:
    raw = Raw(port)
    try:
        assert raw.line().startswith(b"+OK")
        raw.send(b"CAPA\r\n")
        capa = b""
        while not capa.endswith(b".\r\n"):
            capa += raw.line()
        assert b"USER" not in capa and b"SASL" not in capa
        for command in (f"USER {USERNAME}", f"PASS {PASSWORD}",
                        f"AUTH PLAIN {encode_plain(USERNAME, PASSWORD)}"):
            raw.send(command.encode() + b"\r\n")
            assert raw.line().startswith(b"-ERR [AUTH]"), command
        raw.send(b"STAT\r\n")
        assert raw.line().startswith(b"-ERR")
    finally:
        raw.close()


def test_plaintext_auth_refused_on_a_non_loopback_listener(rel_relay, sandbox):
    """Listeners bound to 0.0.0.0 without TLS: SMTP does not offer AUTH and answers 538 5.7.11,
    POP3 offers no USER/SASL and answers -ERR [AUTH] to USER, PASS and AUTH PLAIN, also when
    allow_plaintext_auth_from lists only another network."""
    other = (ipaddress.ip_network("10.0.0.0/8"),)
    relay = rel_relay(smtp_listener=ListenerConfig(True, "0.0.0.0", 0, allow_plaintext_auth_from=other),
                      pop3_listener=ListenerConfig(True, "0.0.0.0", 0, allow_plaintext_auth_from=other))
    _smtp_login_refused(relay.smtp_port)
    _pop3_login_refused(relay.pop3_port)
    assert sandbox.oauth.counters.get("refresh_requests", 0) == 0


def test_plaintext_auth_allowed_from_a_listed_network(rel_relay, sandbox):
    """On 0.0.0.0 listeners, allow_plaintext_auth_from: [127.0.0.0/8] lets loopback clients log in
    without TLS on SMTP and POP3."""
    nets = (LOOPBACK_NET,)
    relay = rel_relay(smtp_listener=ListenerConfig(True, "0.0.0.0", 0, allow_plaintext_auth_from=nets),
                      pop3_listener=ListenerConfig(True, "0.0.0.0", 0, allow_plaintext_auth_from=nets))
    with relay.smtp() as client:
        assert client.has_extn("auth")
        assert client.sendmail("a@x.test", ["b@x.test"], b"Subject: s\r\n\r\nx\r\n") == {}
    pop = relay.pop()
    assert pop.stat()[0] >= 0
    pop.quit()


def test_plaintext_rule_is_lifted_by_tls(rel_relay, sandbox, tmp_path):
    """On 0.0.0.0 listeners with TLS (SMTP STARTTLS, POP3 implicit TLS) logins work over TLS while
    SMTP before STARTTLS still refuses AUTH."""
    cert, key = generate_self_signed(tmp_path / "listener-tls")
    ctx = ssl.create_default_context(cafile=str(cert))
    relay = rel_relay(
        smtp_listener=ListenerConfig(True, "0.0.0.0", 0, tls="starttls", cert_file=cert, key_file=key),
        pop3_listener=ListenerConfig(True, "0.0.0.0", 0, tls="implicit", cert_file=cert, key_file=key))
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=TIMEOUT_S) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", f"PLAIN {encode_plain(USERNAME, PASSWORD)}")[0] == 538
        client.starttls(context=ctx)
        client.ehlo()
        assert client.has_extn("auth")
        client.login(USERNAME, PASSWORD)
    pop = poplib.POP3_SSL("127.0.0.1", relay.pop3_port, timeout=TIMEOUT_S, context=ctx)
    pop.user(USERNAME)
    assert pop.pass_(PASSWORD).startswith(b"+OK")
    pop.quit()


@pytest.mark.parametrize("verify", [False, True])
def test_verify_tls_false_is_logged_as_warning_at_start(rel_relay, sandbox, caplog, verify):
    """Starting with verify_tls: false on an account's SMTP and POP3 upstream logs one WARNING per
    listener naming the setting; with verification on, no such warning."""
    caplog.set_level(logging.INFO)
    smtp = UpstreamEndpoint(sandbox.host, sandbox.smtp_port, "starttls", ca_file=sandbox.ca_file,
                            verify_tls=verify)
    pop3 = UpstreamEndpoint(sandbox.host, sandbox.pop3_port, "implicit", ca_file=sandbox.ca_file,
                            verify_tls=verify)
    rel_relay(smtp=smtp, pop3=pop3)
    warned = {(r.name, r.getMessage()) for r in caplog.records
              if r.levelno == logging.WARNING and "verify_tls" in r.getMessage()}
    if verify:
        assert warned == set()
    else:
        assert {name for name, _ in warned} == {"relay.smtp", "relay.pop3"}
        texts = " ".join(text for _, text in warned)
        assert "accounts.rel.smtp.verify_tls is false" in texts
        assert "accounts.rel.pop3.verify_tls is false" in texts and "NOT verified" in texts


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0", "192.0.2.10"])
def test_startup_log_states_the_same_plaintext_rule_as_the_authenticator(tmp_path, caplog, host):
    """The listener line logged at start says plaintext AUTH is allowed for any client exactly when
    LocalAuthenticator allows it for an outside client (loopback binds other than 127.0.0.1 too)."""
    from relay.app_wiring import log_listener as _log_listener

    caplog.set_level(logging.INFO, logger="relay")
    listener = ListenerConfig(True, host, 0)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump({
        "token_store": {"key_env": "RELAY_STORE_KEY"},
        "credentials": {"c": {"provider": "google", "client_id": "x"}},
        "accounts": {"a": {"username": "u", "password_hash": hash_password("p", log2_n=4),
                           "mailbox": "a@example.com", "credentials": "c"}},
    }))
    allowed = LocalAuthenticator(load_config(path, env={})).plaintext_auth_allowed(
        listener, "203.0.113.9", tls_active=False)
    _log_listener("smtp", listener, 2525)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("listener smtp"))
    assert ("any client (bound to loopback)" in line) == allowed


def test_verify_tls_false_is_warned_once_per_endpoint_under_relay_app(sandbox, tmp_path, caplog):
    """Through RelayApp (what `relay serve` runs), verify_tls: false on the SMTP and the POP3
    upstream is warned about exactly once each (it was logged twice for SMTP)."""
    from relay.app import RelayApp
    from relay.sandbox.loop import LoopThread
    from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

    from .conftest import build_config, seed_store

    caplog.set_level(logging.INFO)
    smtp = UpstreamEndpoint(sandbox.host, sandbox.smtp_port, "starttls", ca_file=sandbox.ca_file,
                            verify_tls=False)
    pop3 = UpstreamEndpoint(sandbox.host, sandbox.pop3_port, "implicit", ca_file=sandbox.ca_file,
                            verify_tls=False)
    config = build_config(sandbox, tmp_path / "tokens.enc", smtp=smtp, pop3=pop3)
    key = decode_key(generate_key(), "test")
    seed_store(sandbox, config.token_store.path, key)
    thread = LoopThread("rel-app-verify-tls").start()
    app = RelayApp(config, store=EncryptedFileStore(config.token_store.path, key).open())
    try:
        thread.run(app.start())
    finally:
        thread.run(app.stop(0.5), timeout_s=20)
        thread.stop()
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "verify_tls is false" in r.getMessage()]
    assert sorted(text.split(" ")[0] for text in warned) == ["accounts.rel.pop3.verify_tls",
                                                            "accounts.rel.smtp.verify_tls"]

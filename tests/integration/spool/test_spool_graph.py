"""Spool mode for an account that sends through Microsoft Graph (the sandbox's fake Graph):
250 queued, then sendMail with the envelope as Bcc; throttling backs the account off for Graph's
Retry-After; a refusal bounces a DSN that itself goes out through Graph."""

from __future__ import annotations

import email
import logging
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.app_harness import started_app_with_token

from relay.configuration import parse_config
from relay.graph.send import size_limit
from relay.passwords import hash_password
from relay.sandbox.loop import LoopThread
from relay.sandbox.world import SandboxWorld
from relay.spool.graph_sender import GraphMessageSender
from relay.tokens.store import generate_key

from .conftest import PASSWORD, SpoolRelay, launch_spool_relay, wait_until

MAILBOX = "sales@sandbox.test"
KEY_ENV = "RELAY_SPOOL_GRAPH_KEY"


def graph_spool_yaml(sandbox: SandboxWorld, tmp_path: Path, **spool: Any) -> dict[str, Any]:
    """A relay whose account 'sales' (login sales-app) spools and sends through the fake Graph."""
    account = sandbox.graph_account_yaml("sales-app", hash_password(PASSWORD, log2_n=10), MAILBOX)
    account["delivery"] = "spool"
    return {
        "listen": {"smtp": {"port": 0}, "pop3": {"enabled": False}},
        "token_store": {"path": str(tmp_path / "tokens.enc"), "key_env": KEY_ENV},
        "credentials": sandbox.credentials_yaml("sandbox"),
        "accounts": {"sales": account},
        "limits": {"auth_failure_delay_s": 0.05},
        "spool": {"directory": str(tmp_path / "spool"), "max_messages_per_minute": 100_000, **spool},
    }


StartGraphSpool = Callable[..., SpoolRelay]


@pytest.fixture
def start_graph_spool(sandbox: SandboxWorld, tmp_path: Path) -> Iterator[StartGraphSpool]:
    """Factory: a spooling Graph relay (RelayApp, spool on a `ManualClock`, as in conftest);
    ``credentials`` updates the sandbox credentials' YAML."""
    started: list[SpoolRelay] = []

    def start(credentials: dict[str, Any] | None = None) -> SpoolRelay:
        data = graph_spool_yaml(sandbox, tmp_path, retry_initial_s=60.0)
        data["credentials"]["sandbox"].update(credentials or {})
        directory = tmp_path / f"relay{len(started)}"
        directory.mkdir(mode=0o700)
        relay = launch_spool_relay(sandbox, parse_config(data, env={KEY_ENV: "x"}), directory,
                                   "relay-spool-graph")
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def graph_spool(start_graph_spool: StartGraphSpool) -> SpoolRelay:
    """A spooling Graph relay with the sandbox's normal credentials."""
    return start_graph_spool()


def _message(subject: str, to: str = "a@example.com") -> bytes:
    return (f"From: {MAILBOX}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n"
            f"body of {subject}\r\n.dot line\r\n").encode()


def _sendmail_requests(sandbox: SandboxWorld) -> list[int]:
    return [status for method, path, status in sandbox.graph.request_log() if path.endswith("/sendMail")]


def test_spool_account_on_graph_uses_the_graph_sender(graph_spool: SpoolRelay) -> None:
    """The spool's sender factory gives a send_via: graph account a GraphMessageSender."""
    account = graph_spool.config.accounts["sales"]
    service = graph_spool.service
    sender = service.make_sender(account, graph_spool.tokens, graph_spool.config, "relay.test")
    assert isinstance(sender, GraphMessageSender)


def test_queued_with_250_then_sent_through_graph_byte_exact_with_envelope_bcc(
        graph_spool: SpoolRelay) -> None:
    """250 queued as ID; the worker's sendMail carries the client's bytes with the envelope-only
    recipient added as Bcc; the spool is empty afterwards."""
    with graph_spool.smtp() as client:
        client.mail("app@sandbox.test")
        client.rcpt("a@example.com")
        client.rcpt("hidden@example.com")
        code, text = client.data(_message("one"))
        assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
        client.ehlo()  # the account's path is known now: Graph's extensions and size limit
        assert client.has_extn("8bitmime") and not client.has_extn("smtputf8")
        graph = graph_spool.config.accounts["sales"].graph
        assert graph is not None
        limit = size_limit(graph, graph_spool.config.limits.max_message_bytes)
        assert client.esmtp_features["size"] == str(limit) and limit < 3_000_000
    wait_until(lambda: len(graph_spool.sandbox.graph.sent()) == 1, what="the sendMail")
    head, body = _message("one").split(b"\r\n\r\n", 1)
    assert graph_spool.sandbox.graph.sent() == [head + b"\r\nBcc: hidden@example.com\r\n\r\n" + body]
    wait_until(lambda: graph_spool.queued() == 0, what="spool empty")
    assert graph_spool.service.worker.delivered == 1


def test_graph_throttling_backs_off_for_retry_after_then_delivers_each_once(
        graph_spool: SpoolRelay) -> None:
    """A burst meets a 429 with Retry-After 30: the account backs off for exactly 30 s (not the
    60 s retry_initial_s), sends nothing meanwhile, then every message goes out exactly once."""
    sandbox = graph_spool.sandbox
    sandbox.graph.throttle(n=1, retry_after="30")
    subjects = [f"burst-{i}" for i in range(6)]
    with graph_spool.smtp() as client:
        for subject in subjects:
            assert client.sendmail("app@sandbox.test", ["a@example.com"], _message(subject)) == {}
    graph_spool.wait_backing_off()
    until = graph_spool.call(lambda: graph_spool.service.worker.backoff_until("sales"))
    assert until == graph_spool.clock.now() + 30
    assert 429 in _sendmail_requests(sandbox)
    graph_spool.advance(30)
    wait_until(lambda: graph_spool.queued() == 0, what="all delivered after the backoff")
    sent = [email.message_from_bytes(m)["Subject"] for m in sandbox.graph.sent()]
    assert sorted(sent) == sorted(subjects)  # each exactly once
    assert _sendmail_requests(sandbox).count(429) == 1
    assert graph_spool.service.worker.delivered == len(subjects)


def test_graph_403_bounces_a_dsn_sent_through_graph(graph_spool: SpoolRelay) -> None:
    """Graph 403 (no Mail.Send permission) is permanent: the message leaves the spool and the
    sender gets an RFC 3464 DSN (550 5.7.1), sent from the account's mailbox through Graph."""
    sandbox = graph_spool.sandbox
    sandbox.graph.fail_next(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    with graph_spool.smtp() as client:
        assert client.sendmail("app@sandbox.test", ["a@example.com"], _message("denied")) == {}
    wait_until(lambda: len(sandbox.graph.sent()) == 1, what="the DSN through Graph")
    dsn = email.message_from_bytes(sandbox.graph.sent()[0])
    assert dsn["To"] == "<app@sandbox.test>" and MAILBOX in dsn["From"]
    assert dsn.get_content_type() == "multipart/report"
    report = dsn.as_string()
    assert "Final-Recipient: rfc822; a@example.com" in report
    assert "Status: 5.7.1" in report and "Diagnostic-Code: smtp; 550 5.7.1" in report
    assert _sendmail_requests(sandbox) == [403, 202]
    wait_until(lambda: graph_spool.queued() == 0, what="spool empty")
    assert graph_spool.service.worker.bounced == 1


def test_graph_413_bounces_with_552(graph_spool: SpoolRelay) -> None:
    """Graph 413 (request too large) is permanent: a DSN with 552 5.3.4."""
    sandbox = graph_spool.sandbox
    sandbox.graph.fail_next(413, "RequestEntityTooLarge", "The request is too large.")
    with graph_spool.smtp() as client:
        assert client.sendmail("app@sandbox.test", ["a@example.com"], _message("huge")) == {}
    wait_until(lambda: len(sandbox.graph.sent()) == 1, what="the DSN through Graph")
    report = sandbox.graph.sent()[0].decode()
    assert "Status: 5.3.4" in report and "552 5.3.4" in report


def test_revoked_graph_token_is_refreshed_once_and_the_message_sent(graph_spool: SpoolRelay) -> None:
    """Graph answers 401 for a revoked token: one forced refresh, then 202; no backoff."""
    sandbox = graph_spool.sandbox
    with graph_spool.smtp() as client:
        client.sendmail("app@sandbox.test", ["a@example.com"], _message("first"))
        wait_until(lambda: len(sandbox.graph.sent()) == 1, what="the first sendMail")
        sandbox.oauth.revoke_all_access_tokens()
        client.sendmail("app@sandbox.test", ["b@example.com"], _message("second", to="b@example.com"))
    wait_until(lambda: len(sandbox.graph.sent()) == 2, what="the second sendMail")
    assert _sendmail_requests(sandbox) == [202, 401, 202]
    assert graph_spool.call(lambda: graph_spool.service.worker.backoff_until("sales")) == 0.0


def test_wrong_audience_backs_the_account_off_and_keeps_the_message(
        start_graph_spool: StartGraphSpool, caplog: pytest.LogCaptureFixture) -> None:
    """A token for the wrong audience: 401, one refresh, 401 again: like a failed login the
    account backs off, the message stays queued (no DSN), and the log points at graph_scopes."""
    caplog.set_level(logging.INFO)
    relay = start_graph_spool(credentials={"graph_scopes": ["https://outlook.office.com/SMTP.Send"]})
    with relay.smtp() as client:
        assert client.sendmail("app@sandbox.test", ["a@example.com"], _message("audience")) == {}
    relay.wait_backing_off()
    assert _sendmail_requests(relay.sandbox) == [401, 401]
    assert relay.queued() == 1 and relay.service.worker.bounced == 0
    assert "graph_scopes" in caplog.text and "Invalid audience" in caplog.text


def test_relay_app_accepts_spool_with_graph_and_delivers(sandbox: SandboxWorld, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole RelayApp from YAML (delivery: spool + send_via: graph): 250 queued, then the
    message arrives at the fake Graph byte-exact."""
    monkeypatch.setenv(KEY_ENV, generate_key())
    config = parse_config(graph_spool_yaml(sandbox, tmp_path))
    thread = LoopThread("relay-app-spool-graph").start()
    app = thread.run(started_app_with_token(config, tmp_path / "tokens.enc", sandbox.oauth, "sales", MAILBOX))
    try:
        assert app.smtp_port is not None
        with smtplib.SMTP("127.0.0.1", app.smtp_port, timeout=30) as client:
            client.login("sales-app", PASSWORD)
            client.mail("app@sandbox.test")
            client.rcpt("a@example.com")
            code, text = client.data(_message("app"))
            assert code == 250 and b"queued as" in text
        wait_until(lambda: len(sandbox.graph.sent()) == 1, what="the sendMail")
        assert sandbox.graph.sent() == [_message("app")]
    finally:
        thread.run(app.stop(2.0), timeout_s=30)
        thread.stop()

"""Alerts from a running `relay serve`: a real HTTP webhook receiver and email through the sandbox SMTP."""

from __future__ import annotations

import json
import smtplib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ops_helpers import OpsSetup, free_port, run_relay, send_mail, wait_until

ADMIN_MAILBOX = "admin@sandbox.test"


class WebhookReceiver:
    """An HTTP server on loopback that records every JSON POST body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.bodies.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, event: str) -> list[dict[str, object]]:
        """The bodies of one event kind (firing, repeat, resolved)."""
        with self.lock:
            return [b for b in self.bodies if b.get("event") == event]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A running webhook receiver."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def _alert_mails(ops: OpsSetup, marker: str) -> list[bytes]:
    return [m.data for m in ops.world.smtp.messages()
            if ADMIN_MAILBOX in m.rcpt_tos and marker.encode() in m.data]


def test_revoked_grant_alerts_once_per_channel_and_recovers_once(ops: OpsSetup, serve,
                                                                 webhook: WebhookReceiver) -> None:
    """Revoking a grant gives exactly one webhook and one email alert naming the fix; re-authorizing
    gives exactly one recovery notice on each."""
    ops.add_account("alerts", "alerts@sandbox.test")
    access, refresh = ops.seed("ops", "ops@sandbox.test")
    ops.seed("alerts", "alerts@sandbox.test")
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.extra["alerts"] = {"check_interval_s": 0.1, "repeat_interval_s": 3600,
                           "webhook": {"url": webhook.url, "format": "plain"},
                           "email": {"account": "alerts", "to": ADMIN_MAILBOX}}
    proc = serve(ops.write())
    proc.wait_listening()

    ops.world.oauth.revoke_refresh_token(refresh)
    ops.world.oauth.revoke_access_token(access)
    with pytest.raises(smtplib.SMTPException):  # the relay finds the grant dead: 4xx to the client
        send_mail(proc.ports["smtp"], "ops-app", "ops@sandbox.test", "x@sandbox.test")
    wait_until(lambda: webhook.events("firing") and _alert_mails(ops, "ALERT"), what="the alerts")
    [fired] = webhook.events("firing")
    assert (fired["alert"], fired["account"]) == ("needs_reauthorization", "ops")
    assert fired["fix"] == "run `relay authorize ops`" and "invalid_grant" in str(fired["cause"])
    [mail] = _alert_mails(ops, "ALERT")
    assert b"Subject: [xoauth2-relay] ALERT: account ops: needs re-authorization" in mail
    assert b"relay authorize ops" in mail

    ops.seed("ops", "ops@sandbox.test")  # what `relay authorize ops` stores
    wait_until(lambda: webhook.events("resolved") and _alert_mails(ops, "RESOLVED"), what="the recovery")
    [resolved] = webhook.events("resolved")
    assert (resolved["alert"], resolved["account"]) == ("needs_reauthorization", "ops")
    assert len(_alert_mails(ops, "RESOLVED")) == 1
    # Many checks ran between the alert and the recovery: still exactly one alert of each kind.
    assert len(webhook.events("firing")) == 1 and webhook.events("repeat") == []
    assert len(_alert_mails(ops, "ALERT")) == 1
    send_mail(proc.ports["smtp"], "ops-app", "ops@sandbox.test", "x@sandbox.test")
    for secret in ops.secrets():
        assert secret not in proc.output()
        assert all(secret.encode() not in m.data for m in ops.world.smtp.messages())


def test_failing_alert_channels_are_logged_and_the_relay_keeps_serving(ops: OpsSetup, serve) -> None:
    """A webhook nobody answers and an email through an account without a grant: both failures are
    logged with the alert, the relay stays up, and the alert repeats at the configured interval."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.extra["alerts"] = {"check_interval_s": 0.1, "repeat_interval_s": 0.5,
                           "webhook": {"url": f"http://127.0.0.1:{free_port()}/hook", "timeout_s": 2},
                           "email": {"account": "ops", "to": ADMIN_MAILBOX, "from": "relay@sandbox.test"}}
    proc = serve(ops.write())
    proc.wait_listening()
    proc.wait_for("alerts: the webhook channel failed")
    proc.wait_for("alerts: the email channel failed")
    proc.wait_for("ALERT (still): account ops: needs re-authorization")
    assert "ALERT: account ops: needs re-authorization; cause: " in proc.output()
    assert "Traceback" not in proc.output()
    assert proc.proc.poll() is None
    greeting = run_relay("health", "--greetings", "-c", str(ops.config_path))
    assert greeting.returncode == 0, greeting.stdout

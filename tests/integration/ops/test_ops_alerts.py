"""Alerts from a running `relay serve`: a real HTTP webhook receiver and email through the sandbox SMTP."""

from __future__ import annotations

import json
import smtplib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
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


def _short_lived_cert(directory: Path, days: int) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 that expires in ``days`` days: (cert, key) paths."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "short.pem", directory / "short.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def test_expiring_listener_certificate_alerts(ops: OpsSetup, serve, webhook: WebhookReceiver) -> None:
    """A listener certificate that expires within certificate_expiry_days gives one alert naming the
    file and the reload that applies a renewed one (Slack format: a `text`)."""
    ops.seed("ops", "ops@sandbox.test")
    cert, key = _short_lived_cert(ops.dir, days=3)
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.extra["alerts"] = {"check_interval_s": 0.1, "certificate_expiry_days": 14,
                           "webhook": {"url": webhook.url, "format": "slack"}}
    path = ops.write()
    data = yaml.safe_load(path.read_text())
    data["listen"]["smtp"].update({"tls": "starttls", "cert_file": cert, "key_file": key})
    path.write_text(yaml.safe_dump(data))
    proc = serve(path)
    proc.wait_listening()
    wait_until(lambda: webhook.bodies, what="the certificate alert")
    [body] = webhook.bodies
    assert list(body) == ["text"]
    text = str(body["text"])
    assert "certificate expiring" in text and cert in text and "expires in" in text
    assert "systemctl reload xoauth2-relay" in text


def test_refresh_failing_longer_than_threshold_alerts_and_recovers(ops: OpsSetup, serve,
                                                                  webhook: WebhookReceiver) -> None:
    """The token endpoint failing (HTTP 503) for longer than refresh_failing_after_s gives one
    refresh_failing alert; a successful refresh afterwards gives one recovery."""
    ops.seed("ops", "ops@sandbox.test", expires_in_s=-60)
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.extra["alerts"] = {"check_interval_s": 0.1, "refresh_failing_after_s": 0.5,
                           "webhook": {"url": webhook.url}}
    proc = serve(ops.write())
    proc.wait_listening()
    ops.world.oauth.fail_next(1000, 503)
    with pytest.raises(smtplib.SMTPException):
        send_mail(proc.ports["smtp"], "ops-app", "ops@sandbox.test", "x@sandbox.test")
    wait_until(lambda: webhook.events("firing"), what="the refresh_failing alert")
    [fired] = webhook.events("firing")
    assert (fired["alert"], fired["account"]) == ("refresh_failing", "ops")
    assert "relay check ops" in str(fired["fix"])
    ops.world.oauth.clear_faults()
    send_mail(proc.ports["smtp"], "ops-app", "ops@sandbox.test", "x@sandbox.test")
    wait_until(lambda: webhook.events("resolved"), what="the recovery")
    assert len(webhook.events("firing")) == 1 and len(webhook.events("resolved")) == 1

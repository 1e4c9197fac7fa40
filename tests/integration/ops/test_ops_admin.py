"""The admin listener of a running `relay serve`: endpoints, auth, bad input, relay status/health."""

from __future__ import annotations

import json
import re

from ops_helpers import (
    ADMIN_TOKEN,
    OpsSetup,
    enable_admin,
    free_port,
    http_get,
    raw_http,
    run_relay,
    send_mail,
    wait_until,
)


def _start(ops: OpsSetup, serve, *, token: str | None = ADMIN_TOKEN) -> tuple[object, int]:
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    admin_port = enable_admin(ops, token=token)
    proc = serve(ops.write())
    proc.wait_listening()
    proc.wait_for(f"admin listener on http://127.0.0.1:{admin_port}")
    return proc, admin_port


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels are exactly ``labels`` (None if absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name and dict(re.findall(r'(\w+)="([^"]*)"', match[2] or "")) == labels:
            return float(match[3])
    return None


def test_endpoints_report_a_delivered_message_and_never_a_token(ops: OpsSetup, serve) -> None:
    """/healthz, /readyz, /status and /metrics answer; a sent message shows up; no secret in any body."""
    ops.seed("ops", "ops@sandbox.test")
    proc, port = _start(ops, serve)
    assert http_get(port, "/healthz", token=None)[0] == 200
    status, _, body = http_get(port, "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "reasons": []}

    send_mail(proc.ports["smtp"], "ops-app", "ops@sandbox.test", "someone@sandbox.test",
              "x" * 500 + "\r\n" + "y" * 500 + "\r\n")
    doc = json.loads(http_get(port, "/status")[2])
    account = doc["accounts"]["ops"]
    assert account["grant_state"] == "valid" and account["messages_sent"] == 1
    assert account["needs_reauthorization"] is False and account["access_token_expires_at"]
    assert {ls["name"]: ls["port"] for ls in doc["listeners"]} == proc.ports
    assert all(ls["accepting"] for ls in doc["listeners"])

    def scrape() -> str:
        return http_get(port, "/metrics")[2].decode()

    # The session ends when the relay has seen the client's QUIT and close: wait for it.
    wait_until(lambda: _metric(scrape(), "xoauth2relay_sessions_total", protocol="smtp", outcome="ok"),
               what="the SMTP session to end")
    status, headers, metrics = http_get(port, "/metrics")
    text = metrics.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert _metric(text, "xoauth2relay_messages_total", account="ops", outcome="delivered") == 1.0
    assert _metric(text, "xoauth2relay_message_bytes_total", account="ops", outcome="delivered") >= 1000
    assert _metric(text, "xoauth2relay_sessions_total", protocol="smtp", outcome="ok") == 1.0
    assert _metric(text, "xoauth2relay_needs_reauthorization", account="ops") == 0.0
    assert _metric(text, "xoauth2relay_upstream_replies_total", account="ops", protocol="smtp",
                   **{"class": "2xx"}) >= 2
    assert _metric(text, "xoauth2relay_access_token_expiry_timestamp_seconds", account="ops") > 1e9
    assert "xoauth2relay_upstream_login_seconds_bucket" in text
    everything = b"".join(http_get(port, p)[2] for p in ("/status", "/metrics", "/readyz"))
    for secret in [*ops.secrets(), ADMIN_TOKEN]:
        assert secret.encode() not in everything


def test_relay_status_and_health_use_the_admin_listener(ops: OpsSetup, serve) -> None:
    """`relay status` prints the account table, `relay health` says ready: both exit 0."""
    ops.seed("ops", "ops@sandbox.test")
    _start(ops, serve)
    result = run_relay("status", "-c", str(ops.config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^ops\s+valid\s+\d{4}-", result.stdout, re.M), result.stdout
    assert "LISTENER" in result.stdout and "smtp" in result.stdout
    health = run_relay("health", "-c", str(ops.config_path))
    assert (health.returncode, health.stdout.strip()) == (0, "ready")
    as_json = run_relay("status", "--json", "-c", str(ops.config_path))
    assert json.loads(as_json.stdout)["accounts"]["ops"]["grant_state"] == "valid"


def test_readyz_is_503_naming_the_account_to_authorize(ops: OpsSetup, serve) -> None:
    """An account without a grant: /readyz 503 with the reason and fix; relay health exits 1 saying so."""
    _proc, port = _start(ops, serve)
    status, headers, body = http_get(port, "/readyz")
    assert status == 503 and headers["content-type"] == "application/json"
    reasons = json.loads(body)["reasons"]
    assert reasons == ["account ops: not authorized; fix: relay authorize ops"]
    health = run_relay("health", "-c", str(ops.config_path))
    assert health.returncode == 1 and "relay authorize ops" in health.stdout
    assert run_relay("health", "--live", "-c", str(ops.config_path)).returncode == 0
    metrics = http_get(port, "/metrics")[2].decode()
    assert _metric(metrics, "xoauth2relay_needs_reauthorization", account="ops") == 1.0


def test_bad_http_input_gets_http_errors_and_mail_listeners_stay_up(ops: OpsSetup, serve) -> None:
    """Malformed line 400, huge header 431, unknown path 404, no/wrong token 401, POST 405; SMTP still 220."""
    ops.seed("ops", "ops@sandbox.test")
    proc, port = _start(ops, serve)
    assert raw_http(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_http(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n") \
        .startswith(b"HTTP/1.1 431 ")
    assert raw_http(port, b"\x00\x01\xff\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert http_get(port, "/nope")[0] == 404
    status, headers, _ = http_get(port, "/status", token=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert http_get(port, "/metrics", token="wrong-token-wrong-token")[0] == 401
    assert http_get(port, "/status", method="POST")[0] == 405
    status, headers, body = http_get(port, "/status", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    smtp_greeting = raw_http(proc.ports["smtp"], b"QUIT\r\n")
    assert smtp_greeting.startswith(b"220 ")
    assert http_get(port, "/healthz")[0] == 200
    wait_until(lambda: proc.proc.poll() is None, what="relay still running")

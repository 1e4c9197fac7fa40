"""Unit tests for the operations modules: HTTP request model, bearer check, metrics labels, alert
rules and tracker, webhook payloads, sd_notify helpers, the admin/alerts configuration and JSON log
fields."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import h11
import pytest

from relay.admin.report import ListenerState, RelayReport, readiness, status_document
from relay.admin.websession import bearer_ok
from relay.alerts.channels import alert_message, webhook_payload
from relay.alerts.rules import Alert, AlertTracker, Condition, evaluate
from relay.config.model import AlertsConfig
from relay.configuration import parse_config
from relay.errors import ConfigError
from relay.httpserver import HttpResponse, build_request, response_headers
from relay.logging_setup import configure_logging, register_secret
from relay.metrics import AccountActivity, RelayMetrics, message_outcome, reply_class
from relay.passwords import hash_password
from relay.sdnotify import notify, ready, reloading, socket_address, stopping, watchdog_interval_s
from relay.tokens.manager import AccountTokenStatus

HASH = hash_password("pw", log2_n=4)


def _config(**extra: Any) -> dict[str, Any]:
    return {
        "token_store": {"key_env": "RELAY_STORE_KEY"},
        "credentials": {"c": {"provider": "microsoft", "client_id": "abc", "tenant_id": "t.example"}},
        "accounts": {"sales": {"username": "erp", "password_hash": HASH, "mailbox": "sales@contoso.com",
                               "credentials": "c"},
                     "reader": {"username": "rd", "password_hash": HASH, "mailbox": "rd@contoso.com",
                                "credentials": "c", "smtp": False}},
        **extra,
    }


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    return info.value.problems


# --- relay.httpserver -------------------------------------------------------------------------------

def test_build_request_parses_query_form_and_lowercases_headers() -> None:
    """Target, query (first value), headers (lower-case, first value) and a urlencoded form."""
    event = h11.Request(method="POST", target="/x?a=1&b=&a=2",
                        headers=[("Host", "h"), ("X-Y", "z"), ("x-y", "second"),
                                 ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")])
    req = build_request(event, b"k=v&k=w&e=", "1.2.3.4:5")
    assert (req.method, req.path, req.query) == ("POST", "/x", {"a": "1", "b": ""})
    assert req.headers["x-y"] == "z" and req.form == {"k": "v", "e": ""} and req.client == "1.2.3.4:5"


def test_response_headers_default_and_override() -> None:
    """Length, type, no-store and nosniff are set; a response's own header replaces a default."""
    headers = dict(response_headers(HttpResponse(200, b"abc", "text/plain",
                                                 (("Cache-Control", "max-age=5"),)), close=True))
    assert headers == {"Content-Type": "text/plain", "Content-Length": "3", "Connection": "close",
                       "X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=5"}


@pytest.mark.parametrize(("header", "ok"), [
    ("Bearer s3cret-token-value", True), ("bearer  s3cret-token-value ", True), (None, False),
    ("Bearer wrong", False), ("Basic s3cret-token-value", False), ("Bearer", False),
    ("Bearer s3cret-token-valuE", False), ("Bearer s3cret-token-value\u00e9", False)])
def test_bearer_ok(header: str | None, ok: bool) -> None:
    """Only `Bearer <the token>` passes (scheme case-insensitive)."""
    assert bearer_ok(header, "s3cret-token-value") is ok


# --- relay.metrics -----------------------------------------------------------------------------------

def test_reply_classes_and_message_outcomes() -> None:
    """Codes map to 2xx..5xx (no reply: error) and to delivered / deferred / refused."""
    assert [reply_class(c) for c in (250, 354, 451, 550, None, 999)] == ["2xx", "3xx", "4xx", "5xx", "error",
                                                                         "error"]
    assert [message_outcome(c) for c in (250, 451, 554, None)] == ["delivered", "deferred", "refused",
                                                                   "deferred"]


def test_metric_labels_come_only_from_the_configuration() -> None:
    """An account name the configuration does not know is counted as `other`; activity is kept per
    configured account; a failing refresh streak starts once and ends with a success."""
    clock = iter([100.0, 200.0, 300.0]).__next__
    m = RelayMetrics(["sales"], clock=clock)
    m.message_finished("sales", 250, 10, 0.1)
    m.message_finished("attacker-chosen-name", 250, 10, 0.1)
    text = m.render().decode()
    assert 'xoauth2relay_messages_total{account="sales",outcome="delivered"} 1.0' in text
    assert 'xoauth2relay_messages_total{account="other",outcome="delivered"} 1.0' in text
    assert "attacker-chosen-name" not in text and "_created" not in text
    m.token_refreshed("sales", "failed", "boom")
    m.token_refreshed("sales", "failed", "boom")
    assert m.activity["sales"].refresh_failing_since == 100.0
    m.token_refreshed("sales", "ok")
    assert m.activity["sales"].refresh_failing_since is None and m.activity["sales"].messages_sent == 1
    m.upstream_login("sales", "smtp", 0.2, 535)
    m.upstream_login("sales", "smtp", 0.2, 535)
    assert m.activity["sales"].token_rejections == 2
    m.upstream_login("sales", "smtp", 0.2, 235)
    assert m.activity["sales"].token_rejections == 0


# --- relay.alerts ------------------------------------------------------------------------------------

def _report(states: dict[str, str], activity: dict[str, AccountActivity] | None = None) -> RelayReport:
    config = parse_config(_config(), env={})
    tokens = [AccountTokenStatus(name, "c", "authorization_code", state, None,
                                 "invalid_grant: revoked" if state == "needs authorize" else None)
              for name, state in states.items()]
    listeners = [ListenerState("smtp", "127.0.0.1", 2525, "none", True, 0)]
    return RelayReport(config, listeners, tokens, activity or {}, None, 0.0, 10.0)


def test_evaluate_names_account_cause_and_fix() -> None:
    """Dead grants, long-failing refreshes, repeated token refusals, unsaved tokens and an expiring
    certificate each become one condition with its fix."""
    alerts = AlertsConfig(refresh_failing_after_s=60, token_rejections=3, certificate_expiry_days=10)
    activity = {"reader": AccountActivity(refresh_failing_since=0.0, token_rejections=3,
                                          last_upstream_error="535 5.7.3 nope")}
    now = 1000.0
    soon = datetime.fromtimestamp(now, UTC) + timedelta(days=3)
    later = datetime.fromtimestamp(now, UTC) + timedelta(days=30)
    conditions = evaluate(_report({"sales": "needs authorize", "reader": "valid"}, activity), alerts, now,
                          unsaved=["reader"], store_path="/var/lib/t.enc",
                          certificates={"/etc/c.pem": soon, "/etc/ok.pem": later})
    by_kind = {c.kind: c for c in conditions}
    assert sorted(by_kind) == ["certificate_expiring", "needs_reauthorization", "refresh_failing",
                               "store_write_failing", "token_rejected"]
    dead = by_kind["needs_reauthorization"]
    assert (dead.account, dead.cause, dead.fix) == ("sales", "invalid_grant: revoked",
                                                    "run `relay authorize sales`")
    assert "relay authorize reader" in by_kind["refresh_failing"].fix
    assert "/var/lib/t.enc" in by_kind["store_write_failing"].fix
    assert by_kind["certificate_expiring"].subject == "/etc/c.pem"
    assert evaluate(_report({"sales": "valid"}), alerts, now) == []


def test_tracker_fires_once_repeats_at_interval_and_recovers_once() -> None:
    """A condition fires once, repeats only after the interval, and its end gives one recovery."""
    tracker = AlertTracker(repeat_interval_s=100)
    cond = Condition("needs_reauthorization", "sales", "revoked", "run `relay authorize sales`", "sales")
    assert [a.event for a in tracker.step([cond], 0)] == ["firing"]
    assert tracker.step([cond], 50) == []
    assert [a.event for a in tracker.step([cond], 100)] == ["repeat"]
    assert tracker.step([cond], 150) == []
    resolved = tracker.step([], 160)
    assert [(a.event, a.since) for a in resolved] == [("resolved", 0)]
    assert tracker.step([], 170) == []
    assert [a.event for a in tracker.step([cond], 180)] == ["firing"]


def test_webhook_payloads_and_email() -> None:
    """Plain: the fields; Slack and Teams: a `text` with the account, cause and fix; the email too."""
    cond = Condition("needs_reauthorization", "sales", "invalid_grant", "run `relay authorize sales`",
                     "sales")
    alert = Alert("firing", cond, 0.0, 5.0)
    plain = webhook_payload(alert, "plain", "host1")
    assert (plain["event"], plain["alert"], plain["account"], plain["fix"]) == (
        "firing", "needs_reauthorization", "sales", "run `relay authorize sales`")
    for fmt in ("slack", "teams"):
        payload = webhook_payload(alert, fmt, "host1")
        assert list(payload) == ["text"]
        assert "account sales" in str(payload["text"]) and "relay authorize sales" in str(payload["text"])
    msg = alert_message(Alert("resolved", cond, 0.0, 5.0), "relay@x.test", ("a@x.test",), "host1")
    assert msg["Subject"] == "[xoauth2-relay] RESOLVED: account sales: needs re-authorization"
    assert msg["Auto-Submitted"] == "auto-generated"


# --- relay.admin.report ------------------------------------------------------------------------------

def test_readiness_reasons_and_status_document() -> None:
    """Unusable grants and stopped listeners are reasons; the status document carries the fix."""
    report = _report({"sales": "needs authorize", "reader": "valid"})
    assert readiness(report) == ["account sales: needs authorize; fix: relay authorize sales"]
    doc = status_document(report)
    assert doc["ready"] is False
    assert doc["accounts"]["sales"]["fix"] == "relay authorize sales"  # type: ignore[index]
    assert doc["accounts"]["reader"]["sends"] is False  # type: ignore[index]


# --- relay.sdnotify ----------------------------------------------------------------------------------

def test_sdnotify_messages_and_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Message texts, socket addresses, the watchdog interval, and no-op without NOTIFY_SOCKET."""
    assert ready("a\nb  c") == "READY=1\nSTATUS=a b c"
    assert reloading().startswith("RELOADING=1\nMONOTONIC_USEC=") and stopping().startswith("STOPPING=1")
    assert socket_address("/run/x") == "/run/x" and socket_address("@abc") == b"\0abc"
    assert socket_address("vsock:1:2") is None and socket_address("@") is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None and watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/socket"}) is False


# --- configuration -----------------------------------------------------------------------------------

def test_admin_and_alerts_sections_parse_with_defaults() -> None:
    """admin: {} gives 127.0.0.1:9025 without a token; alerts get their defaults; keepalive is 7 days."""
    config = parse_config(_config(admin={}, alerts={"webhook": {"url": "https://hooks.example/x"},
                                                    "email": {"account": "sales", "to": "ops@x.test"}}),
                          env={})
    assert config.admin is not None and (config.admin.host, config.admin.port) == ("127.0.0.1", 9025)
    assert config.admin.auth_token is None
    assert config.alerts is not None and config.alerts.email is not None
    assert config.alerts.email.to == ("ops@x.test",) and config.alerts.webhook.format == "plain"  # type: ignore[union-attr]
    assert config.limits.token_keepalive_days == 7 and config.limits.token_refresh_margin_s == 900
    assert parse_config(_config(), env={}).admin is None


def test_admin_and_alerts_errors_name_the_yaml_path() -> None:
    """A wildcard admin bind needs a token; bad alert settings are named by their YAML path."""
    found = dict(_problems(_config(
        admin={"host": "0.0.0.0", "port": 99999},
        alerts={"webhook": {"url": "ftp://x", "format": "discord"},
                "email": {"account": "reader", "to": ["not-an-address"]}, "repeat_interval_s": 0})))
    assert "admin.auth_token" in found and "admin.port" in found
    assert "alerts.webhook.url" in found and "alerts.webhook.format" in found
    assert "has no smtp upstream" in found["alerts.email.account"]
    assert "alerts.email.to[0]" in found and "alerts.repeat_interval_s" in found
    assert "too short" in dict(_problems(_config(admin={"auth_token": "short"})))["admin.auth_token"]
    assert "needs a webhook" in dict(_problems(_config(alerts={"check_interval_s": 5})))["alerts"]


# --- JSON log fields ---------------------------------------------------------------------------------

def test_json_log_fields_are_keys_and_redacted() -> None:
    """Extra fields become JSON keys; a secret inside a field is still masked by the formatter."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    handler = configure_logging("INFO", "json", stream=out)
    try:
        register_secret("very-secret-token-value")
        logging.getLogger("relay.smtp").info(
            "smtp session s1 end", extra={"account": "sales", "session": "s1", "client": "127.0.0.1:5",
                                          "protocol": "smtp", "outcome": "ok", "duration_ms": 12,
                                          "bytes": 100, "upstream_reply": "535 very-secret-token-value"})
    finally:
        root.removeHandler(handler)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    entry = json.loads(out.getvalue())
    assert {k: entry[k] for k in ("account", "session", "client", "protocol", "outcome", "duration_ms",
                                  "bytes")} == {"account": "sales", "session": "s1", "client": "127.0.0.1:5",
                                                "protocol": "smtp", "outcome": "ok", "duration_ms": 12,
                                                "bytes": 100}
    assert entry["upstream_reply"] == "535 ***"


def test_dashboard_uses_only_metrics_the_relay_exposes() -> None:
    """Every xoauth2relay_* name in the Grafana dashboard is one the relay writes to /metrics."""
    import re
    from pathlib import Path

    dashboard = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "xoauth2-relay.json"
    text = dashboard.read_text()
    json.loads(text)
    m = RelayMetrics(["sales"])
    m.session_started("smtp")
    m.session_ended("smtp", "sales", "ok")
    m.upstream_login("sales", "smtp", 0.1, 235)
    m.message_finished("sales", 250, 1, 0.1)
    m.message_fetched("sales", 1)
    m.token_refreshed("sales", "ok")
    m.token_expiry["sales"] = 1
    m.needs_reauth["sales"] = 0
    m.pool_sessions["idle"] = 0
    exposed = set(re.findall(r"^(xoauth2relay_\w+)", m.render().decode(), re.M))
    used = set(re.findall(r"xoauth2relay_\w+", text))
    assert used and used <= exposed, used - exposed


# --- admin page (issue 21) ---------------------------------------------------------------------------

def test_web_sessions_cookies_and_csrf() -> None:
    """Sessions come from the cookie, expire, end on logout; CSRF compared exactly; failures back off."""
    from relay.admin.websession import WebSessions, cookie_value, csrf_ok, session_cookie

    now = [0.0]
    sessions = WebSessions(clock=lambda: now[0])
    s = sessions.create()
    cookie = session_cookie(s)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert sessions.get(f"other=1; {cookie.split(';')[0]}") is s
    assert cookie_value("a=1; relay_admin=xyz", "relay_admin") == "xyz" and cookie_value(None, "x") is None
    assert csrf_ok(s, s.csrf) and not csrf_ok(s, None) and not csrf_ok(s, s.csrf + "x")
    now[0] = 9 * 3600.0
    assert sessions.get(cookie.split(";")[0]) is None
    assert [sessions.failure_delay_s("1.2.3.4", 0.5) for _ in range(3)] == [0.5, 1.0, 2.0]
    sessions.succeeded("1.2.3.4")
    assert sessions.failure_delay_s("1.2.3.4", 0.5) == 0.5
    assert "Max-Age=0" in session_cookie(None)


def test_status_page_escapes_everything_and_has_no_script() -> None:
    """Account names, errors and URLs are HTML-escaped; the page has forms with the CSRF token and no
    script; the device code is shown."""
    from relay.admin.actions import DeviceSignIn
    from relay.admin.web import status_page

    evil = "<script>alert(1)</script>"
    doc = {"version": "1", "ready": False, "uptime_s": 1, "reasons": [evil], "listeners": [],
           "accounts": {"sales": {"grant_state": "needs authorize", "needs_reauthorization": True,
                                  "fix": "relay authorize sales", "last_upstream_error": evil, "sends": True,
                                  "messages_sent": 2, "messages_fetched": 0}}}
    page = status_page(doc, "tok'en", [evil], {"sales": DeviceSignIn("sales", "ABCD-EFGH", "https://x/dev",
                                                                     0.0)})
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "value='tok&#x27;en'" in page and "ABCD-EFGH" in page and "Re-authorize" in page
    assert page.count("name=csrf") == 4  # authorize, test, revoke, logout

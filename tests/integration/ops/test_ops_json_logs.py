"""`relay serve --log-format json`: session and token events carry their fields as JSON keys."""

from __future__ import annotations

import poplib

from ops_helpers import PASSWORD, OpsSetup, free_port, send_mail, wait_until

SESSION_KEYS = {"account", "session", "client", "protocol", "outcome", "upstream_reply", "duration_ms",
                "bytes"}


def test_session_and_token_lines_have_fields(ops: OpsSetup, serve) -> None:
    """An expired token is refreshed (a token event with account and outcome); an SMTP and a POP3
    session each end with one line carrying every session field; nothing secret in any line."""
    ops.seed("ops", "ops@sandbox.test", expires_in_s=-60)
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    proc = serve(ops.write(), "--log-format", "json")
    proc.wait_listening()
    send_mail(proc.ports["smtp"], "ops-app", "ops@sandbox.test", "ops@sandbox.test", "hello\r\n")
    pop = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=30)
    pop.user("ops-app")
    pop.pass_(PASSWORD)
    pop.stat()
    pop.quit()

    def ends() -> dict[str, dict[str, object]]:
        lines = proc.json_lines()
        return {str(e["protocol"]): e for e in lines if e.get("session") and "duration_ms" in e}

    sessions = wait_until(lambda: len(ends()) == 2 and ends(), what="both session end lines")
    for protocol in ("smtp", "pop3"):
        entry = sessions[protocol]
        assert set(entry) >= SESSION_KEYS, entry
        assert (entry["account"], entry["outcome"]) == ("ops", "ok")
        assert isinstance(entry["duration_ms"], int) and isinstance(entry["bytes"], int)
    assert str(sessions["smtp"]["upstream_reply"]).startswith("250 ")
    assert str(sessions["pop3"]["upstream_reply"]).startswith("+OK")
    assert sessions["smtp"]["bytes"] > 0
    refreshed = [e for e in proc.json_lines() if e.get("outcome") == "refreshed"]
    assert refreshed and refreshed[0]["account"] == "ops" and refreshed[0]["logger"] == "relay.tokens"
    output = proc.output()
    for secret in ops.secrets():
        assert secret not in output

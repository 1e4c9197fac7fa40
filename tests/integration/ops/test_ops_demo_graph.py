"""`relay demo --graph` as a subprocess: the round trip through the fake Microsoft Graph."""

from __future__ import annotations

from ops_helpers import run_relay


def test_demo_graph_sends_and_reads_through_graph() -> None:
    """`relay demo --once --graph` sends with sendMail (202 -> 250) and fetches from the Graph Inbox."""
    result = run_relay("demo", "--once", "--graph", "--smtp-port", "0", "--pop3-port", "0", timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("\u2713") == 6
    assert "Microsoft Graph answered 202 to POST /users/demo@sandbox.test/sendMail" in out
    assert "the Inbox read through Graph" in out
    assert "Round trip OK: plain logins in, Microsoft Graph out." in out
    assert "sandbox-secret" not in out + result.stderr

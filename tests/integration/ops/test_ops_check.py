"""`relay check` and `relay send-test` against the sandbox."""

from __future__ import annotations

import signal

from ops_helpers import PASSWORD, OpsSetup, run_relay


def test_check_reports_healthy_unauthorized_and_rejected_accounts(ops: OpsSetup) -> None:
    """Each account gets the right verdict and fix; any broken account makes the exit code 1."""
    ops.add_account("fresh", "fresh@sandbox.test")
    ops.add_account("wrongsignin", "sales@sandbox.test")
    ops.seed("ops", "ops@sandbox.test")
    ops.seed("wrongsignin", "someone-else@sandbox.test")  # signed in as another mailbox
    config = str(ops.write())
    result = run_relay("check", "-c", config)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in
            (["ops"], ["fresh"], ["wrongsignin"])}
    assert "valid until" in rows["ops"] and rows["ops"].split()[-4:] == ["ok", "ok", "ok", "OK"]
    assert "needs authorize" in rows["fresh"] and rows["fresh"].endswith("BROKEN")
    assert "REJECTED" in rows["wrongsignin"] and rows["wrongsignin"].endswith("BROKEN")
    assert "run `relay authorize fresh`" in out
    assert "refused the token for sales@sandbox.test" in out
    assert "sign-in was done as sales@sandbox.test" in out
    assert "2 of 3 account(s) broken." in out
    for secret in ops.secrets():
        assert secret not in out + result.stderr


def test_check_of_a_healthy_account_exits_zero(ops: OpsSetup) -> None:
    """Only healthy accounts checked: exit 0 and 'All accounts OK.'."""
    ops.seed("ops", "ops@sandbox.test")
    result = run_relay("check", "-c", str(ops.write()), "ops")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All accounts OK." in result.stdout


def test_check_names_an_unreachable_upstream(ops: OpsSetup) -> None:
    """An upstream that refuses connections is reported UNREACHABLE with the setting to fix."""
    ops.seed("ops", "ops@sandbox.test")
    ops.accounts["ops"]["smtp"]["port"] = 1  # nothing listens there
    result = run_relay("check", "-c", str(ops.write()), "--timeout", "5")
    assert result.returncode == 1
    assert "UNREACHABLE" in result.stdout and "check accounts.ops.smtp" in result.stdout


def test_send_test_goes_through_the_running_relay(ops: OpsSetup, serve) -> None:
    """send-test logs in to the running relay and the message arrives; a wrong password exits 1."""
    from ops_helpers import free_port

    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.seed("ops", "ops@sandbox.test")
    config = str(ops.write())
    proc = serve(config)
    proc.wait_listening()
    result = run_relay("send-test", "ops", "--to", "dest@example.org", "-c", config, "--password-stdin",
                       input_text=PASSWORD + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Sent: the upstream accepted the message for dest@example.org" in result.stdout
    message = ops.world.smtp.wait_for_messages(1, timeout_s=10)[0]
    assert message.rcpt_tos == ("dest@example.org",) and b"xoauth2-relay test message" in message.data
    bad = run_relay("send-test", "ops", "--to", "dest@example.org", "-c", config, "--password-stdin",
                    input_text="wrong\n")
    assert bad.returncode == 1
    assert "refused the local login of ops-app" in bad.stderr
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0

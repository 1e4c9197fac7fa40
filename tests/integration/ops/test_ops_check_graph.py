"""`relay check` for accounts that send and read through Microsoft Graph (the sandbox's fake)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml
from ops_helpers import PASSWORD, OpsSetup, run_relay

from relay.passwords import hash_password
from relay.sandbox.world import SandboxWorld

MAILBOX = "graph@sandbox.test"


def graph_ops(ops: OpsSetup) -> OpsSetup:
    """ops with only account 'g' via Graph, seeded as after `relay authorize`."""
    ops.accounts.clear()
    ops.accounts["g"] = ops.world.graph_account_yaml("g-app", hash_password(PASSWORD), MAILBOX)
    ops.seed("g", MAILBOX)
    return ops


def row(out: str) -> str:
    """The table row of account g."""
    return next(line for line in out.splitlines() if line.startswith("g "))


def test_check_of_a_healthy_graph_account(ops: OpsSetup) -> None:
    """Both directions probed: send ok (nothing sent), read ok with the Inbox count; exit 0."""
    setup = graph_ops(ops)
    setup.world.graph.mailboxes.deliver(MAILBOX, b"Subject: x\r\n\r\nx\r\n")
    result = run_relay("check", "-c", str(setup.write()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "graph: ok" in row(result.stdout) and "graph: ok (1 in Inbox)" in row(result.stdout)
    assert setup.world.graph.sent() == []
    for secret in setup.secrets():
        assert secret not in result.stdout + result.stderr


def _deny(world: SandboxWorld) -> None:
    world.graph.denied_permissions.update({"Mail.Send", "Mail.Read", "Mail.ReadWrite"})


def _forget_mailbox(world: SandboxWorld) -> None:
    with world.graph.mailboxes.lock:
        world.graph.mailboxes.folders.clear()


def _throttle(world: SandboxWorld) -> None:
    world.graph.throttle(2, retry_after="120")


@pytest.mark.parametrize(("fault", "cell", "fix"), [
    (_deny, "graph: NO PERMISSION", "admin consent"),
    (_forget_mailbox, "graph: NO MAILBOX", "check accounts.g.mailbox"),
    (_throttle, "graph: THROTTLED", "retry after 120 seconds"),
])
def test_check_explains_graph_failures(ops: OpsSetup, fault: Callable[[SandboxWorld], None], cell: str,
                                       fix: str) -> None:
    """Missing permission, unknown mailbox and throttling each get their cell and fix; exit 1."""
    setup = graph_ops(ops)
    fault(setup.world)
    result = run_relay("check", "-c", str(setup.write()))
    assert result.returncode == 1
    assert cell in row(result.stdout) and row(result.stdout).endswith("BROKEN")
    assert fix in result.stdout


def test_check_names_a_wrong_audience(ops: OpsSetup) -> None:
    """Graph scopes that yield a token for another resource: WRONG AUDIENCE, fix names graph_scopes."""
    setup = graph_ops(ops)
    path = setup.write()
    data = yaml.safe_load(path.read_text())
    data["credentials"]["sandbox"]["graph_scopes"] = ["https://outlook.office.com/SMTP.Send"]
    path.write_text(yaml.safe_dump(data))
    result = run_relay("check", "-c", str(path))
    assert result.returncode == 1
    assert "graph: WRONG AUDIENCE" in row(result.stdout)
    assert "graph_scopes" in result.stdout and "Invalid audience" in result.stdout

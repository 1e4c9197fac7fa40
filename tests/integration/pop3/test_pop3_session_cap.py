"""accounts.NAME.max_upstream_pop3_sessions: a second POP3 client of one mailbox waits for the
first one's upstream session instead of hitting the maildrop lock; past the wait it gets -ERR."""

from __future__ import annotations

import poplib
import threading
from dataclasses import replace
from pathlib import Path

from support.app_harness import wait_until

from relay.sandbox.world import SandboxWorld
from relay.upstream_slots import loop_slots, pop3_slot_key

from .conftest import PASSWORD, RunningPop3Relay, build_config, launch_pop3_relay, username, with_limits


async def _waiting(relay: RunningPop3Relay) -> int:
    account = relay.config.accounts["acct0"]
    assert account.pop3 is not None
    return loop_slots().waiting(pop3_slot_key(account.pop3.host, account.mailbox))


def _start(sandbox: SandboxWorld, tmp_path: Path, wait_s: float) -> RunningPop3Relay:
    config = build_config(sandbox, tmp_path, limits=with_limits(upstream_slot_wait_s=wait_s))
    account = replace(config.accounts["acct0"], max_upstream_pop3_sessions=1)
    config = replace(config, accounts={"acct0": account})
    directory = tmp_path / "relay"
    directory.mkdir(mode=0o700)
    return launch_pop3_relay(sandbox, config, directory)

def test_second_session_waits_for_the_first(sandbox: SandboxWorld, tmp_path: Path) -> None:
    """Cap 1: the second login completes right after the first client QUITs (no IN-USE refusal)."""
    relay = _start(sandbox, tmp_path, wait_s=20)
    try:
        first = relay.pop()
        second_result: list[object] = []
        logged_in = threading.Event()

        def second() -> None:
            client = relay.pop(login=False)
            client.user(username(0))
            try:
                second_result.append(client.pass_(PASSWORD))
                logged_in.set()
                client.quit()
            except poplib.error_proto as exc:
                second_result.append(exc)

        worker = threading.Thread(target=second)
        worker.start()
        wait_until(lambda: relay.thread.run(_waiting(relay)) > 0, 20,
                   "the second login to queue for the slot")
        assert not logged_in.is_set()
        first.quit()
        worker.join(timeout=30)
        assert second_result and isinstance(second_result[0], bytes) and second_result[0].startswith(b"+OK")
    finally:
        relay.stop()


def test_wait_is_bounded(sandbox: SandboxWorld, tmp_path: Path) -> None:
    """Past limits.upstream_slot_wait_s the second login gets a temporary -ERR; the first is unharmed."""
    relay = _start(sandbox, tmp_path, wait_s=0.3)
    try:
        first = relay.pop()
        client = relay.pop(login=False)
        client.user(username(0))
        try:
            client.pass_(PASSWORD)
            raise AssertionError("the second login should have been refused")
        except poplib.error_proto as exc:
            assert b"SYS/TEMP" in exc.args[0]
        assert first.stat()[0] >= 0
        first.quit()
    finally:
        relay.stop()

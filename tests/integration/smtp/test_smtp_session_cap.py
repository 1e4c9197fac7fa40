"""Per-mailbox cap on concurrent upstream SMTP sessions, and allowed_senders, against the sandbox."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from relay.config.model import LimitsConfig

from .conftest import MAILBOX, StartRelay

CLIENTS = 20


@pytest.fixture
def exchange_like(sandbox) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The sandbox upstream enforces Exchange's 3 concurrent sessions per mailbox."""
    sandbox.smtp.max_sessions_per_mailbox = 3
    sandbox.smtp.delay_s = 0.01  # every reply a little slow: sessions overlap for real
    yield
    sandbox.smtp.max_sessions_per_mailbox = None
    sandbox.smtp.delay_s = 0.0


def _message(i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = MAILBOX
    msg["To"] = "rcpt@example.test"
    msg["Subject"] = f"burst {i}"
    msg.set_content(f"message {i}\n")
    return msg


def _burst(relay, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Send ``n`` messages from ``n`` concurrent clients (started together); return the failures."""
    failures: list[str] = []
    start = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            client = relay.smtp(timeout=60)
            start.wait(timeout=30)
            try:
                client.send_message(_message(i))
            finally:
                client.quit()
        except (smtplib.SMTPException, OSError, threading.BrokenBarrierError) as exc:
            failures.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return failures


def test_twenty_clients_on_one_account_get_no_upstream_refusal(start_relay: StartRelay, sandbox,  # type: ignore[no-untyped-def]
                                                               exchange_like: None) -> None:
    """20 concurrent clients on one account: the cap of 3 queues them locally, 0 refusals."""
    sandbox.smtp.clear()
    relay = start_relay(max_upstream_sessions=3)
    failures = _burst(relay, CLIENTS)
    assert failures == []
    assert len(sandbox.smtp.wait_for_messages(CLIENTS)) == CLIENTS
    assert sandbox.smtp.counters.get("concurrency_refusals", 0) == 0
    assert sandbox.smtp.peak_sessions_per_mailbox[MAILBOX] <= 3


def test_without_the_cap_the_sandbox_refuses_like_exchange(start_relay: StartRelay, sandbox,  # type: ignore[no-untyped-def]
                                                          exchange_like: None) -> None:
    """The control: with no cap the same burst gets 432 4.3.2 refusals (the test can fail)."""
    sandbox.smtp.clear()
    relay = start_relay(max_upstream_sessions=0)
    failures = _burst(relay, CLIENTS)
    assert failures and any("4.3.2" in f for f in failures)
    assert sandbox.smtp.counters.get("concurrency_refusals", 0) > 0


def test_over_the_cap_for_too_long_gets_451_4_3_2(start_relay: StartRelay, sandbox) -> None:  # type: ignore[no-untyped-def]
    """A session that waits longer than limits.upstream_slot_wait_s gets 451 4.3.2 naming the setting."""
    relay = start_relay(max_upstream_sessions=1,
                        limits=LimitsConfig(auth_failure_delay_s=0.05, upstream_slot_wait_s=0.3,
                                            upstream_connect_timeout_s=5, upstream_command_timeout_s=10))
    holder = relay.smtp()
    holder.mail(MAILBOX)  # holds the only upstream session
    other = relay.smtp()
    try:
        code, text = other.mail(MAILBOX)
        assert code == 451 and b"4.3.2" in text
    finally:
        other.close()
        holder.quit()
    again = relay.smtp()  # the slot came back when the holder quit
    try:
        assert again.mail(MAILBOX)[0] == 250
    finally:
        again.quit()


def test_allowed_senders_refuses_other_addresses_locally(start_relay: StartRelay, sandbox) -> None:  # type: ignore[no-untyped-def]
    """MAIL FROM outside allowed_senders: 550 5.7.1 naming the setting; listed ones pass."""
    relay = start_relay(allowed_senders=(MAILBOX, "*@shared.test"))
    before = sandbox.smtp.counters.get("auth_ok", 0)
    client = relay.smtp()
    try:
        code, text = client.mail("ceo@elsewhere.test")
        assert code == 550 and b"5.7.1" in text and b"accounts.sales.allowed_senders" in text
        client.rset()
        assert sandbox.smtp.counters.get("auth_ok", 0) == before  # refused before any upstream work
        assert client.mail("Billing@Shared.test")[0] == 250
        client.rset()
        assert client.mail(MAILBOX.upper())[0] == 250
    finally:
        client.quit()

"""The opt-in upstream session pool: reuse across client connections, the per-account cap, dead and
expired sessions, and the pool switched off."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from support.app_harness import wait_until

from relay.config.model import LimitsConfig, PoolConfig
from relay.smtp.pool import UpstreamPool
from relay.smtp.upstream import UpstreamSmtpSession

from .conftest import RunningRelay

LIMITS = LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=20,
                      upstream_command_timeout_s=20, upstream_data_timeout_s=20)

StartPooled = Callable[..., RunningRelay]


@pytest.fixture
def start_pooled(start_relay: Callable[..., RunningRelay]) -> StartPooled:
    """Factory: a relay in front of the sandbox with ``upstream_pool`` set from keyword arguments."""

    def start(*, limits: LimitsConfig = LIMITS, **pool: Any) -> RunningRelay:
        return start_relay(limits=limits, upstream_pool=PoolConfig(**{"enabled": True, **pool}))

    return start


def pool_of(relay: RunningRelay) -> UpstreamPool:
    """The relay's upstream pool (pooling must be enabled)."""
    pool = relay.server.handler.pool
    assert pool is not None
    return pool


def send_one(relay: RunningRelay, body: bytes) -> None:
    """One connection, one message, QUIT: the legacy-app pattern the pool is for."""
    with relay.smtp() as client:
        assert client.sendmail("app@example.com", ["a@example.com"], body) == {}


def test_sequential_one_message_connections_share_one_upstream_session(start_pooled, sandbox):
    """20 connections with one message each use a single upstream connection and login."""
    relay = start_pooled()
    bodies = [f"message {i}\r\n".encode() for i in range(20)]
    for body in bodies:
        send_one(relay, body)
    assert [m.data for m in sandbox.smtp.wait_for_messages(20)] == bodies
    assert sandbox.smtp.counters["connections"] == 1
    assert sandbox.smtp.counters["auth_ok"] == 1
    assert pool_of(relay).idle_sessions("sales") == 1


def test_several_messages_and_rset_in_one_connection_reuse_the_session(start_pooled, sandbox):
    """Within one client connection the lent session comes back between messages and after RSET."""
    relay = start_pooled()
    with relay.smtp() as client:
        client.sendmail("app@example.com", ["a@example.com"], b"one\r\n")
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("dropped@example.com")[0] == 250
        assert client.rset()[0] == 250
        client.sendmail("app@example.com", ["b@example.com"], b"two\r\n")
    msgs = sandbox.smtp.wait_for_messages(2)
    assert [(m.rcpt_tos, m.data) for m in msgs] == [(("a@example.com",), b"one\r\n"),
                                                    (("b@example.com",), b"two\r\n")]
    assert sandbox.smtp.counters["connections"] == 1


def test_concurrency_cap_holds_and_every_message_arrives_once(start_pooled, sandbox):
    """Ten clients at once with max 2: never more than 2 upstream sessions, all 10 delivered once."""
    sandbox.smtp.delay_s = 0.01  # transactions overlap, so clients really queue for a session
    relay = start_pooled(max_sessions_per_account=2)
    start = threading.Barrier(10)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with relay.smtp() as smtp:
                start.wait(timeout=30)
                smtp.sendmail("app@example.com", ["a@example.com"], f"client {i}\r\n".encode())
        except (smtplib.SMTPException, OSError, threading.BrokenBarrierError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    msgs = sandbox.smtp.wait_for_messages(10)
    assert sorted(m.data for m in msgs) == sorted(f"client {i}\r\n".encode() for i in range(10))
    assert len(msgs) == 10
    assert sandbox.smtp.counters["peak_open_connections"] <= 2
    assert sandbox.smtp.counters["connections"] <= 2
    assert pool_of(relay).sessions("sales") <= 2


def test_client_waiting_past_the_connect_timeout_at_the_cap_gets_451_4_3_2(start_pooled, sandbox):
    """With max 1 and the session held by an open transaction, another MAIL gets 451 4.3.2, later 250."""
    limits = replace(LIMITS, upstream_connect_timeout_s=0.5)
    relay = start_pooled(max_sessions_per_account=1, limits=limits)
    with relay.smtp() as holder, relay.smtp() as other:
        assert holder.mail("app@example.com")[0] == 250
        code, text = other.mail("app@example.com")
        assert (code, text[:5]) == (451, b"4.3.2")
        other.rset()
        holder.rset()  # the transaction ends: the session goes back to the pool
        other.sendmail("app@example.com", ["a@example.com"], b"after the wait\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(1)] == [b"after the wait\r\n"]
    assert sandbox.smtp.counters["connections"] == 1


def test_upstream_dropping_pooled_sessions_is_invisible_to_clients(start_pooled, sandbox):
    """After the upstream drops every idle session (a restart) the next message goes through once."""
    relay = start_pooled()
    send_one(relay, b"before\r\n")
    assert sandbox.smtp.drop_connections() == 1
    send_one(relay, b"after\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(2)] == [b"before\r\n", b"after\r\n"]
    assert sandbox.smtp.counters["connections"] == 2


def test_dead_session_found_only_at_mail_is_retried_once_on_a_fresh_one(start_pooled, sandbox,
                                                                      monkeypatch):
    """A dead pooled session that passes the idle checks fails when MAIL goes upstream (with the
    first RCPT, PIPELINING); one fresh retry delivers."""
    monkeypatch.setattr(UpstreamSmtpSession, "looks_idle", property(lambda self: True))
    relay = start_pooled()
    pool_of(relay).probe_after_idle_s = float("inf")  # no RSET check: MAIL is the first to notice
    send_one(relay, b"first\r\n")
    sandbox.smtp.drop_connections()
    wait_until(lambda: sandbox.smtp.counters["open_connections"] == 0, 15, "the upstream sessions to close")
    send_one(relay, b"second\r\n")
    assert [m.data for m in sandbox.smtp.wait_for_messages(2)] == [b"first\r\n", b"second\r\n"]
    assert sandbox.smtp.counters["connections"] == 2
    assert pool_of(relay).sessions("sales") == 1


def test_idle_session_is_closed_after_idle_timeout(start_pooled, sandbox):
    """An idle pooled session is QUIT after idle_timeout_s; the next message opens a new one."""
    relay = start_pooled(idle_timeout_s=0.3)
    send_one(relay, b"one\r\n")
    wait_until(lambda: sandbox.smtp.counters["open_connections"] == 0, 15, "the upstream sessions to close")
    assert pool_of(relay).sessions("sales") == 0
    send_one(relay, b"two\r\n")
    assert len(sandbox.smtp.wait_for_messages(2)) == 2
    assert sandbox.smtp.counters["connections"] == 2


def test_session_older_than_max_age_is_not_reused(start_pooled, sandbox):
    """A pooled session past the pool's maximum age (below the token lifetime) is replaced."""
    relay = start_pooled()
    send_one(relay, b"one\r\n")
    pool_of(relay).max_age_s = 0.0
    send_one(relay, b"two\r\n")
    assert len(sandbox.smtp.wait_for_messages(2)) == 2
    assert sandbox.smtp.counters["connections"] == 2


def test_session_is_retired_once_its_access_token_is_replaced(start_pooled, sandbox):
    """After a token refresh, sessions logged in with the old token are closed, not reused."""
    relay = start_pooled()
    send_one(relay, b"old token\r\n")
    relay.thread.run(relay.tokens.force_refresh("sales"))
    send_one(relay, b"new token\r\n")
    assert len(sandbox.smtp.wait_for_messages(2)) == 2
    assert sandbox.smtp.counters["auth_ok"] == 2
    wait_until(lambda: sandbox.smtp.counters["open_connections"] == 1, 15, "one upstream session left")


def test_stop_closes_every_pooled_session(start_pooled, sandbox):
    """Stopping the relay QUITs the idle pooled sessions."""
    relay = start_pooled()
    send_one(relay, b"x\r\n")
    assert sandbox.smtp.counters["open_connections"] == 1
    relay.stop()
    wait_until(lambda: sandbox.smtp.counters["open_connections"] == 0, 15, "the upstream sessions to close")


def test_disabled_pool_keeps_one_upstream_session_per_client_connection(start_relay, sandbox):
    """Without upstream_pool each client connection logs in upstream and QUITs at its end."""
    relay = start_relay()
    assert relay.server.handler.pool is None
    for i in range(3):
        send_one(relay, f"m{i}\r\n".encode())
    assert len(sandbox.smtp.wait_for_messages(3)) == 3
    assert sandbox.smtp.counters["connections"] == 3
    assert sandbox.smtp.counters["auth_ok"] == 3
    wait_until(lambda: sandbox.smtp.counters["open_connections"] == 0, 15, "the upstream sessions to close")


def test_pool_is_not_slower_with_a_slow_upstream(start_pooled, start_relay, sandbox):
    """With 30 ms per upstream reply, 10 one-message connections are faster pooled than not (a new
    upstream session costs ~9 round trips, a pooled message ~4)."""
    sandbox.smtp.delay_s = 0.03
    timings = {}
    for name, relay in (("off", start_relay(limits=LIMITS)), ("on", start_pooled())):
        began = time.perf_counter()
        for i in range(10):
            send_one(relay, f"{name} {i}\r\n".encode())
        timings[name] = time.perf_counter() - began
    print(f"\n10 sequential one-message connections, 30 ms/reply: pool off {timings['off']:.2f}s, "
          f"on {timings['on']:.2f}s, ratio {timings['off'] / timings['on']:.1f}x")
    assert len(sandbox.smtp.wait_for_messages(20)) == 20
    assert timings["on"] <= timings["off"]

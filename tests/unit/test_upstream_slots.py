"""The per-mailbox upstream session limiter and the allowed_senders check (pure parts)."""

from __future__ import annotations

import asyncio

import pytest

from relay.config.model import AccountConfig
from relay.errors import UpstreamBusy
from relay.sender_policy import sender_allowed, sender_pattern_problem, sender_refusal
from relay.upstream_slots import UpstreamSlots, pop3_slot_key, smtp_slot_key

KEY = smtp_slot_key("SMTP.office365.com", "Sales@Contoso.com")


def test_keys_ignore_case_and_separate_services() -> None:
    """Two accounts on one mailbox share a key; SMTP and POP3 do not."""
    assert smtp_slot_key("smtp.office365.com", "sales@contoso.com") == KEY
    assert pop3_slot_key("smtp.office365.com", "sales@contoso.com") != KEY


def test_cap_queues_in_order_and_hands_slots_over() -> None:
    """Over the cap a caller waits; a release hands the slot to the first waiter (FIFO)."""
    async def scenario() -> list[int]:
        slots = UpstreamSlots(wait_s=5)
        held = [await slots.acquire(KEY, 2, account="a", setting="s") for _ in range(2)]
        order: list[int] = []

        async def waiter(i: int) -> None:
            slot = await slots.acquire(KEY, 2, account="a", setting="s")
            order.append(i)
            slot.release()

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert slots.in_use(KEY) == 2 and order == []
        held[0].release()
        held[0].release()  # idempotent: frees one slot only
        await asyncio.gather(*tasks)
        assert slots.in_use(KEY) == 1
        held[1].release()
        assert slots.in_use(KEY) == 0
        return order
    assert asyncio.run(scenario()) == [0, 1, 2]


def test_wait_is_bounded_and_names_the_setting() -> None:
    """No slot within wait_s: UpstreamBusy naming the setting; the queue is left clean."""
    async def scenario() -> None:
        slots = UpstreamSlots(wait_s=0.05)
        held = await slots.acquire(KEY, 1, account="a", setting="accounts.a.max_upstream_sessions")
        with pytest.raises(UpstreamBusy, match=r"accounts\.a\.max_upstream_sessions"):
            await slots.acquire(KEY, 1, account="a", setting="accounts.a.max_upstream_sessions")
        held.release()
        assert slots.in_use(KEY) == 0
        again = await slots.acquire(KEY, 1, account="a", setting="s")
        again.release()
    asyncio.run(scenario())


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    """A waiter cancelled (client gone) frees its place; the slot count stays right."""
    async def scenario() -> None:
        slots = UpstreamSlots(wait_s=5)
        held = await slots.acquire(KEY, 1, account="a", setting="s")
        task = asyncio.create_task(slots.acquire(KEY, 1, account="a", setting="s"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held.release()
        assert slots.in_use(KEY) == 0
    asyncio.run(scenario())


def test_zero_or_none_means_unlimited() -> None:
    """cap 0/None counts nothing."""
    async def scenario() -> None:
        slots = UpstreamSlots(wait_s=0.01)
        for cap in (0, None):
            for _ in range(10):
                await slots.acquire(KEY, cap, account="a", setting="s")
        assert slots.in_use(KEY) == 0
    asyncio.run(scenario())


@pytest.mark.parametrize(("allowed", "address", "ok"), [
    ((), "anyone@anywhere.test", True),
    (("a@x.test",), "A@X.test", True),
    (("a@x.test",), "b@x.test", False),
    (("*@x.test",), "b@X.TEST", True),
    (("*@x.test",), "b@sub.x.test", False),
    (("*@x.test",), "x.test", False),
    (("a@x.test",), "<>", False),
    (("a@x.test", "<>"), "", True),
])
def test_sender_allowed(allowed: tuple[str, ...], address: str, ok: bool) -> None:
    """Exact addresses and *@domain match case-insensitively; the null sender only when listed."""
    assert sender_allowed(allowed, address) is ok


@pytest.mark.parametrize(("entry", "valid"), [
    ("a@x.test", True), ("*@x.test", True), ("<>", True), ("x.test", False), ("a*@x.test", False),
    ("*@*.x.test", False), ("a b@x.test", False),
])
def test_sender_patterns(entry: str, valid: bool) -> None:
    """The loader accepts addresses, *@domain and <> only."""
    assert (sender_pattern_problem(entry) is None) is valid


def test_refusal_names_the_setting() -> None:
    """The refusal is 550 5.7.1 and names accounts.NAME.allowed_senders."""
    account = AccountConfig(name="sales", username="u", password_hash=None, mailbox="s@x.test",
                            credentials="c", smtp=None, pop3=None, allowed_senders=("s@x.test",))
    assert sender_refusal(account, "s@x.test") is None
    refusal = sender_refusal(account, "ceo@x.test")
    assert refusal is not None and refusal.startswith("550 5.7.1 ")
    assert "accounts.sales.allowed_senders" in refusal

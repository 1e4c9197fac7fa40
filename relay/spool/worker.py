"""The spool's delivery worker: per account, in order, within the account's pace; bounces failures.

One task per account with spooled mail starts attempts (oldest first) whenever its `AccountPace`
allows; each attempt loads the message, asks the account's `MessageSender` to send it to the
recipients still pending, and records the outcome:

* accepted recipients are done; permanently refused ones (5xx) get a DSN (unless the sender is
  ``<>`` or the message is itself a DSN); temporarily refused ones are retried;
* a throttling reply (421, 451, x.3.2) or a connection/login failure backs the whole account off
  (`relay.spool.schedule`; for as long as the upstream's Retry-After asks, when it gives one);
  any other 4xx retries that message later (1 min doubling to 1 h);
* a message older than ``spool.max_age_s`` gets a DSN for its pending recipients and is dropped.

A message leaves the spool only after its recipients are all accepted or bounced (the DSN is
spooled first). A crash between the upstream's 250 and the removal sends it again after the
restart: the one duplicate window, documented in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from relay.config.model import AccountConfig, SpoolConfig
from relay.errors import ProtocolInputError, RelayError, SpoolCorrupt, SpoolError
from relay.smtp.failures import describe_failure
from relay.smtp.reply import SmtpReply
from relay.spool.clock import Clock, SystemClock
from relay.spool.crashpoints import crash_point
from relay.spool.dsn import EXPIRED_STATUS, RecipientFailure, build_dsn, status_of
from relay.spool.entry import DeliveryState, Envelope
from relay.spool.schedule import AccountPace, Verdict, is_throttling, retry_delay_s
from relay.spool.sender import MessageSender, SendResult
from relay.spool.store import SpoolStore

log = logging.getLogger("relay.spool")

SenderFactory = Callable[[AccountConfig], MessageSender]
Outcome = tuple[Verdict, float | None]
"""An attempt's verdict for the account's pace, and the wait the upstream asked for (Retry-After)."""
RESCAN_S = 5.0  # how often `relay queue retry/delete` markers from another process are noticed


@dataclass
class _AccountQueue:
    pace: AccountPace
    due: dict[str, float] = field(default_factory=dict)  # id -> next attempt time, oldest first
    busy: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class SpoolWorker:
    """Delivers what the store holds (see the module docstring)."""

    def __init__(self, store: SpoolStore, config: SpoolConfig, accounts: Mapping[str, AccountConfig],
                 senders: SenderFactory, *, hostname: str, clock: Clock | None = None) -> None:
        self.store = store
        self.config = config
        self.accounts = dict(accounts)
        self.senders = senders
        self.hostname = hostname
        self.clock = clock or SystemClock()
        self._queues: dict[str, _AccountQueue] = {}
        self._senders: dict[str, MessageSender] = {}
        self._attempts: set[asyncio.Task[None]] = set()
        self._rescan: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0
        self.bounced = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Queue every stored message by account and start delivering."""
        self.store.on_commit = self.enqueue
        for envelope, state in await asyncio.to_thread(self._scan):  # one thread hop for all
            queue = self._queue_for(envelope.account)
            queue.due[envelope.id] = state.next_attempt_at
        for name, queue in self._queues.items():
            if name not in self.accounts:
                log.warning("spool: %d message(s) for account %s, which is not in the configuration; "
                            "they stay queued until it is added back (or `relay queue delete ID`)",
                            len(queue.due), name)
        self._rescan = asyncio.ensure_future(self._rescan_loop())

    def _scan(self) -> list[tuple[Envelope, DeliveryState]]:
        """Every stored message's envelope and state, oldest first (corrupt ones moved aside)."""
        found = []
        for entry_id in self.store.ids():
            try:
                envelope = self.store.load_envelope(entry_id)
            except (SpoolCorrupt, KeyError):
                continue  # moved aside and reported by the store
            found.append((envelope, self.store.load_state(entry_id)))
        return found

    def reconfigure(self, config: SpoolConfig, accounts: Mapping[str, AccountConfig],
                    senders: SenderFactory) -> None:
        """A reloaded configuration: limits, accounts and senders (kept sessions are dropped)."""
        self.config = config
        self.accounts = dict(accounts)
        self.senders = senders
        for queue in self._queues.values():
            pace = queue.pace
            pace.max_concurrency, pace.per_minute = config.max_concurrency, config.max_messages_per_minute
            pace.retry_initial_s, pace.retry_max_s = config.retry_initial_s, config.retry_max_s
            queue.wake.set()
        old, self._senders = self._senders, {}
        for sender in old.values():
            task = asyncio.ensure_future(sender.close())
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)
        for name, queue in self._queues.items():
            self._start_account(name, queue)

    async def stop(self) -> None:
        """Stop starting attempts, let running ones end, close the senders."""
        self._stopping = True
        tasks = [q.task for q in self._queues.values() if q.task is not None]
        if self._rescan is not None:
            tasks.append(self._rescan)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._attempts:
            await asyncio.gather(*self._attempts, return_exceptions=True)
        for sender in self._senders.values():
            with contextlib.suppress(RelayError, OSError):
                await sender.close()
        self._senders.clear()

    def enqueue(self, envelope: Envelope) -> None:
        """A newly committed message (the store's ``on_commit``)."""
        queue = self._queue_for(envelope.account)
        queue.due[envelope.id] = 0.0
        queue.wake.set()

    def retry(self, entry_id: str | None = None) -> int:
        """Make one message (or all) due now and clear the backoffs; how many were affected."""
        count = 0
        for queue in self._queues.values():
            for queued in queue.due:
                if entry_id is None or queued == entry_id:
                    queue.due[queued] = 0.0
                    count += 1
            queue.pace.clear_backoff()
            queue.wake.set()
        return count

    def backoff_until(self, account: str) -> float:
        """When ``account``'s backoff ends (0: not backing off)."""
        queue = self._queues.get(account)
        return queue.pace.backoff_until if queue is not None else 0.0

    def depth_by_account(self) -> dict[str, int]:
        """Messages queued per account."""
        return {name: len(q.due) for name, q in self._queues.items()}

    # --- per-account scheduling -------------------------------------------------------------

    def _queue_for(self, account: str) -> _AccountQueue:
        queue = self._queues.get(account)
        if queue is None:
            c = self.config
            queue = self._queues[account] = _AccountQueue(AccountPace(
                c.max_concurrency, c.max_messages_per_minute, c.retry_initial_s, c.retry_max_s))
            self._start_account(account, queue)
        return queue

    def _start_account(self, name: str, queue: _AccountQueue) -> None:
        if self._stopping or name not in self.accounts or (queue.task is not None and not queue.task.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop: started by `start`
            queue.task = asyncio.ensure_future(self._run_account(name, queue))

    async def _run_account(self, name: str, queue: _AccountQueue) -> None:
        while not self._stopping:
            queue.wake.clear()
            now = self.clock.now()
            start_at = queue.pace.next_start(now)
            if start_at is None or start_at > now:  # at the cap, rate window or backoff: no scan
                await self.clock.wait(now + RESCAN_S if start_at is None else start_at, queue.wake)
                continue
            entry_id = next((i for i, due in queue.due.items() if due <= now and i not in queue.busy), None)
            if entry_id is not None:
                self._begin(name, queue, entry_id, now)
                continue
            if not queue.due and not queue.busy:
                await self._release_sender(name)  # nothing to send: log out of the mailbox
            next_due = min((due for i, due in queue.due.items() if i not in queue.busy),
                           default=now + RESCAN_S)
            await self.clock.wait(min(next_due, now + RESCAN_S), queue.wake)

    def _begin(self, name: str, queue: _AccountQueue, entry_id: str, now: float) -> None:
        queue.busy.add(entry_id)
        queue.pace.start(now)
        task = asyncio.ensure_future(self._attempt(name, queue, entry_id))
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)

    async def _attempt(self, name: str, queue: _AccountQueue, entry_id: str) -> None:
        verdict, wait_s = Verdict.OK, None
        try:
            verdict, wait_s = await self._deliver(self.accounts[name], queue, entry_id)
        except (RelayError, OSError) as exc:  # a spool file problem: keep it, try later
            log.error("spool: message %s of account %s: %s", entry_id, name, exc)
            queue.due[entry_id] = self.clock.now() + self.config.retry_initial_s
        except Exception:  # a bug in one attempt must neither stop the worker nor spin
            log.exception("spool: unexpected error delivering message %s of account %s; it stays queued",
                          entry_id, name)
            queue.due[entry_id] = self.clock.now() + self.config.retry_initial_s
        finally:
            queue.busy.discard(entry_id)
            queue.pace.finish(verdict, self.clock.now(), wait_s)
            queue.wake.set()

    def _forget(self, queue: _AccountQueue, entry_id: str) -> None:
        queue.due.pop(entry_id, None)

    # --- one attempt ------------------------------------------------------------------------

    async def _deliver(self, account: AccountConfig, queue: _AccountQueue, entry_id: str) -> Outcome:
        try:
            envelope, content = await asyncio.to_thread(self.store.load, entry_id)
        except (KeyError, SpoolCorrupt):  # deleted by `relay queue delete`, or moved aside
            self._forget(queue, entry_id)
            return Verdict.OK, None
        state = self.store.load_state(entry_id)
        now = self.clock.now()
        pending = [r for r in envelope.recipients if r not in state.delivered and r not in state.failed]
        if now - envelope.received_at > self.config.max_age_s:
            expired = {r: RecipientFailure(status_of(line), line) for r, line in state.failed.items()}
            expired |= {r: RecipientFailure(EXPIRED_STATUS, state.last_error) for r in pending}
            await self._finish(account, queue, envelope, content, state, expired, expired=True)
            return Verdict.OK, None
        state.attempts += 1
        try:
            result = await self._sender(account).send(envelope, pending, content)
        except ProtocolInputError as exc:  # an envelope no upstream command can carry: permanent
            refusal = SmtpReply.make(554, "5.6.0", f"the relay cannot send this envelope: {exc}")
            result = SendResult(reply=refusal)
        except (RelayError, OSError) as exc:
            state.last_error = describe_failure(exc, account)
            log.warning("spool: message %s (account %s) not sent, attempt %d: %s; the account backs off",
                        entry_id, account.name, state.attempts, state.last_error)
            await self._save(entry_id, state, queue, 0.0)
            return Verdict.THROTTLED, None
        if result.accepted:
            crash_point("upstream_accepted")
        return await self._record(account, queue, envelope, content, state, pending, result)

    async def _record(self, account: AccountConfig, queue: _AccountQueue, envelope: Envelope,
                      content: bytes, state: DeliveryState, pending: list[str],
                      result: SendResult) -> Outcome:
        state.delivered += list(result.accepted)
        verdict, retry = Verdict.OK, False
        for recipient in pending:
            if recipient in result.accepted:
                continue
            reply: SmtpReply | None = result.refused.get(recipient, result.reply)
            if reply is None:
                continue
            if reply.is_permanent:
                state.failed[recipient] = reply.one_line()
                continue
            retry = True
            state.last_error = reply.one_line()
            if is_throttling(reply):
                verdict = Verdict.THROTTLED
        if retry:
            delay = 0.0 if verdict is Verdict.THROTTLED else retry_delay_s(
                state.attempts, self.config.retry_initial_s, self.config.retry_max_s)
            log.info("spool: message %s (account %s) deferred, attempt %d: %s", envelope.id, account.name,
                     state.attempts, state.last_error)
            await self._save(envelope.id, state, queue, self.clock.now() + delay if delay else 0.0)
            return verdict, result.retry_after_s if verdict is Verdict.THROTTLED else None
        failures = {r: RecipientFailure(status_of(line), line) for r, line in state.failed.items()}
        await self._finish(account, queue, envelope, content, state, failures, expired=False)
        return verdict, None

    async def _save(self, entry_id: str, state: DeliveryState, queue: _AccountQueue, due: float) -> None:
        state.next_attempt_at = due
        try:
            await asyncio.to_thread(self.store.save_state, entry_id, state)
        except OSError as exc:
            log.error("spool: cannot save the delivery state of %s: %s", entry_id, exc)
        queue.due[entry_id] = due

    async def _finish(self, account: AccountConfig, queue: _AccountQueue, envelope: Envelope,
                      content: bytes, state: DeliveryState, failures: Mapping[str, RecipientFailure],
                      *, expired: bool) -> None:
        """Every recipient is accepted or failed: bounce the failed ones, then remove the message."""
        if failures:
            await self._bounce(account, envelope, content, failures, expired=expired)
        else:
            self.delivered += 1
        await asyncio.to_thread(self.store.remove, envelope.id)
        self._forget(queue, envelope.id)
        if state.delivered:
            log.info("spool: message %s (account %s) delivered to %d recipient(s) after %d attempt(s)",
                     envelope.id, account.name, len(state.delivered), state.attempts)

    async def _bounce(self, account: AccountConfig, envelope: Envelope, content: bytes,
                      failures: Mapping[str, RecipientFailure], *, expired: bool) -> None:
        self.bounced += 1
        what = "expired" if expired else "refused"
        recipients = ", ".join(f"{r} ({f.diagnostic or f.status})" for r, f in failures.items())
        to = self.config.bounce_to or envelope.sender
        if envelope.kind == "dsn" or not envelope.sender:
            log.error("spool: message %s (account %s, sender <%s>) %s for %s; no DSN (%s)", envelope.id,
                      account.name, envelope.sender, what, recipients,
                      "a DSN never bounces" if envelope.kind == "dsn" else "null sender")
            return
        log.warning("spool: message %s (account %s) %s for %s; DSN to %s", envelope.id, account.name,
                    what, recipients, to)
        now = self.clock.now()
        dsn = build_dsn(envelope, failures, content=content, from_address=account.mailbox, to_address=to,
                        reporting_host=self.hostname, now=now, expired=expired)
        bounce = Envelope(id=self.store.new_id(), account=account.name, sender=account.mailbox,
                          recipients=(to,), received_at=now, kind="dsn")
        try:
            await self.store.add(bounce, dsn)
        except SpoolError as exc:
            log.error("spool: cannot spool the DSN for %s: %s", envelope.id, exc)

    async def _release_sender(self, name: str) -> None:
        sender = self._senders.pop(name, None)
        if sender is not None:
            with contextlib.suppress(RelayError, OSError):
                await sender.close()

    def _sender(self, account: AccountConfig) -> MessageSender:
        sender = self._senders.get(account.name)
        if sender is None:
            sender = self._senders[account.name] = self.senders(account)
        return sender

    # --- markers from `relay queue` in another process --------------------------------------

    async def _rescan_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(RESCAN_S)
            self.apply_markers()

    def apply_markers(self) -> None:
        """Act on ``queue/*.retry`` and ``retry-all`` markers written by `relay queue retry`."""
        markers = list(self.store.queue_dir.glob("*.retry"))
        everything = self.store.directory / "retry-all"
        if everything.exists():
            with contextlib.suppress(OSError):
                everything.unlink()
            self.retry()
        for marker in markers:
            with contextlib.suppress(OSError):
                marker.unlink()
            self.retry(marker.stem)

"""Live forwarding: the first `relay.smtp.delivery.Delivery`, today's relay behaviour.

`LiveSmtpDelivery` executes the commands of the pure transaction core
(`relay.smtp.transaction.RelayTransaction`) against the account's upstream SMTP session and feeds
their outcomes back; it holds the session object, the core holds every decision. The session is
opened at the first MAIL (`relay.smtp.upstream.open_logged_in`) and kept
for later messages, or with ``upstream_pool.enabled`` lent by `relay.smtp.pool.UpstreamPool` for
one transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from relay.config.model import AccountConfig, LimitsConfig, RelayConfig
from relay.errors import RelayError
from relay.explain import log_explanation
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.secret import Secret
from relay.smtp.dataframe import DataFramer
from relay.smtp.datasink import UpstreamBdatSink, UpstreamDataSink
from relay.smtp.delivery import ConnectionInfo, ContentSink
from relay.smtp.failures import describe_failure
from relay.smtp.pool import UpstreamPool
from relay.smtp.reply import EhloCapabilities, SmtpReply
from relay.smtp.transaction import (
    Acquire,
    Answer,
    Command,
    ContentResult,
    Failed,
    MailRequest,
    Outcome,
    Quit,
    RelayTransaction,
    Release,
    Replied,
    SendMail,
    SendRcpt,
    SendRset,
    SessionInfo,
    SessionReady,
    StartContent,
)
from relay.smtp.upstream import UpstreamSmtpSession, open_logged_in
from relay.tokens.source import TokenSource
from relay.upstream_slots import UpstreamSlots, smtp_slot_key

log = logging.getLogger("relay.smtp")


class LiveForwarding:
    """The default `DeliveryFactory`: live forwarding, with the per-account session pool when
    ``upstream_pool.enabled``."""

    def __init__(self, config: RelayConfig, tokens: TokenSource) -> None:
        self.tokens = tokens
        self.limits = config.limits
        self.slots = UpstreamSlots(self.limits.upstream_slot_wait_s)  # per-mailbox session cap
        self.observer: RelayObserver = NULL_OBSERVER  # relay.metrics (the handler passes it on)
        self.pool: UpstreamPool | None = None
        if config.upstream_pool.enabled:
            self.pool = UpstreamPool(config.upstream_pool, tokens,
                                     wait_timeout_s=self.limits.upstream_connect_timeout_s)

    def __call__(self, account: AccountConfig, conn: ConnectionInfo) -> LiveSmtpDelivery:
        """A delivery forwarding ``account``'s transactions on this connection."""
        return LiveSmtpDelivery(account, conn, tokens=self.tokens, limits=self.limits, pool=self.pool,
                                slots=self.slots, observer=self.observer)

    async def close(self) -> None:
        """QUIT the pooled upstream sessions, if pooling is on."""
        if self.pool is not None:
            await self.pool.close()


class LiveSmtpDelivery:
    """Forwards one connection's transactions to the account's upstream (see module docstring)."""

    def __init__(self, account: AccountConfig, conn: ConnectionInfo, *, tokens: TokenSource,
                 limits: LimitsConfig, pool: UpstreamPool | None,
                 slots: UpstreamSlots | None = None,
                 observer: RelayObserver = NULL_OBSERVER) -> None:
        self.account = account
        self.conn = conn
        self.tokens = tokens
        self.limits = limits
        self.pool = pool
        self.slots = slots or UpstreamSlots(limits.upstream_slot_wait_s)
        self._explained: SmtpReply | None = None
        self.observer = observer
        self.failed = False  # an upstream failure was logged (the session outcome for metrics)
        self._content_started = 0.0
        self.core = RelayTransaction(max_message_bytes=limits.max_message_bytes,
                                     pooled=pool is not None)
        self.up: UpstreamSmtpSession | None = None
        self.messages = 0
        self.bytes = 0
        self._failure_reply: str | None = None

    # --- Delivery -------------------------------------------------------------------------------

    def size_limit(self) -> int:
        """Ours, or the held upstream's SIZE if lower."""
        return self.core.size_limit()

    def path_capabilities(self) -> EhloCapabilities | None:
        """The held upstream's capabilities (None before the first MAIL, or with pooling)."""
        return self.core.session.capabilities if self.core.session is not None else None

    # mail and rcpt hand back _run's coroutine (no coroutine of their own, once per message each).

    def mail(self, sender: str, options: Mapping[str, str]) -> Coroutine[Any, Any, SmtpReply]:
        """MAIL: the held session if alive, else a kept/pooled/new one (see the core)."""
        up = self.up
        alive = up is not None and up.connected
        return self._run(self.core.mail(MailRequest(sender, options), session_alive=alive))

    def rcpt(self, address: str) -> Coroutine[Any, Any, SmtpReply]:
        """RCPT: this recipient's upstream reply, or the refusal of the held MAIL."""
        return self._run(self.core.rcpt(address))

    async def open_content(self) -> ContentSink | SmtpReply:
        """DATA: a sink at once (our 354 does not wait for the upstream), or the 4xx."""
        commands = self.core.data()
        command = commands[-1]
        if isinstance(command, Answer):
            return command.reply
        assert isinstance(command, StartContent) and self.up is not None
        self._content_started = time.monotonic()
        up, limit = self.up, self.core.size_limit()
        if command.chunking:
            return _ForwardedContent(self, UpstreamBdatSink(up, limit, self.conn.busy))
        try:
            up.data_send()
        except (RelayError, OSError) as exc:
            return await self.content_done(ContentResult(error=exc), None)
        return _ForwardedContent(self, UpstreamDataSink(up, limit, self.conn.busy))

    async def content_done(self, result: ContentResult, framer: DataFramer | None) -> SmtpReply:
        """The end of a message: count it when accepted; the client's final reply."""
        size = 0
        if result.reply is not None and result.reply.is_positive and framer is not None:
            size = framer.received_bytes
            self.messages += 1
            self.bytes += size
        final = result.reply or result.refused
        self.observer.message_finished(self.account.name, final.code if final else None, size,
                                       time.monotonic() - self._content_started)
        return await self._run(self.core.content_done(result))

    async def reset(self) -> None:
        """RSET upstream when a transaction is open there; pooling: give the session back."""
        await self._run(self.core.reset())

    async def quit(self) -> None:
        """QUIT upstream (pooling: give the session back instead)."""
        await self._run(self.core.quit())

    def close(self) -> None:
        """Client gone: a clean session goes back to the pool, any other is aborted."""
        for command in self.core.connection_lost():
            self._now(command)

    def summary(self) -> tuple[int, int, str | None]:
        """(messages, bytes, last upstream reply) for the session log line."""
        last = self.core.last_upstream_reply
        return self.messages, self.bytes, self._failure_reply or (last.one_line() if last else None)

    # --- executing the core's commands ----------------------------------------------------------

    async def _run(self, commands: list[Command]) -> SmtpReply:
        """Do the commands; feed each request's outcome back until the core answers."""
        while True:
            last = commands[-1]
            if len(commands) > 1:  # the usual single command needs no slice
                for command in commands[:-1]:
                    if isinstance(command, Quit):
                        await self._quit()
                    else:
                        self._now(command)
            if isinstance(last, Answer):
                if last.failure is not None:
                    self._log_failure(last.failure, last.reply)
                upstream = self.core.last_upstream_reply
                if upstream is not self._explained and upstream is not None:
                    self._explain(upstream)
                return last.reply
            outcome = await self._request(last)  # the handler's busy() covers the wait
            if isinstance(outcome, Replied):
                self._failure_reply = None
            commands = self.core.handle(outcome)

    async def _request(self, command: Command) -> Outcome:
        up = self.up
        try:  # the most frequent first: MAIL+RCPT, then a later RCPT
            if isinstance(command, SendMail):
                assert up is not None
                if command.rcpt is None:
                    return Replied(await up.send_command(command.mail, "MAIL"), None, up.connected)
                mail, rcpt = await up.mail_rcpt(command.mail, command.rcpt)
                # connected matters only after a refused MAIL (is the session reusable?)
                return Replied(mail, rcpt, mail.code < 300 or up.connected)
            if isinstance(command, SendRcpt):
                assert up is not None
                return Replied(await up.send_command(command.rcpt, "RCPT"))
            if isinstance(command, Acquire):
                return SessionReady(await self._acquire(command.fresh))
            assert isinstance(command, SendRset) and up is not None, command
            return Replied(await up.rset())
        except (RelayError, OSError) as exc:
            return Failed(exc)

    async def _acquire(self, fresh: bool) -> SessionInfo:
        if self.pool is not None:
            up = await self.pool.acquire(self.account, self._open, fresh=fresh)
            reused = self.pool.was_reused(up)
        else:
            up, _ = await self._open(self.account)
            reused = False
        self.up = up
        return SessionInfo(up.capabilities, up.pipelining, up.chunking, reused)

    async def _open(self, account: AccountConfig) -> tuple[UpstreamSmtpSession, Secret]:
        """Take a slot under the mailbox's session cap, then log in; the slot is freed on close."""
        assert account.smtp is not None
        slot = await self.slots.acquire(smtp_slot_key(account.smtp.host, account.mailbox),
                                        account.max_upstream_sessions, account=account.name,
                                        setting=f"accounts.{account.name}.max_upstream_sessions")
        started = time.monotonic()
        try:
            up, token = await open_logged_in(account, self.tokens, self.limits,
                                             hostname=self.conn.hostname)
        except BaseException as exc:
            slot.release()
            if isinstance(exc, RelayError | OSError):
                reply = getattr(exc, "reply", None)
                code = int(reply.code) if reply is not None and reply.code.isdigit() else None
                self.observer.upstream_login(account.name, "smtp", time.monotonic() - started, code)
            raise
        self.observer.upstream_login(account.name, "smtp", time.monotonic() - started, 235)
        up.on_close = slot.release
        return up, token

    def _now(self, command: Command) -> None:
        """Drop, Release or (client gone) Quit: at once, no outcome."""
        up, self.up = self.up, None
        if up is None:
            return
        if isinstance(command, Release):
            assert self.pool is not None
            self.pool.release(up)
        elif self.pool is not None:
            self.pool.discard(up)  # aborts it and frees its slot
        else:
            up.abort()

    async def _quit(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            await up.quit()

    def _explain(self, reply: SmtpReply) -> None:
        """A refusal from the upstream: its cause and fix, logged once per account and cause."""
        self._explained = reply
        if reply.code >= 400:
            log_explanation(self.account.name, self.account.mailbox, reply.one_line())

    def _log_failure(self, exc: BaseException, reply: SmtpReply) -> None:
        """One line naming the account, the upstream reply and the fix."""
        explanation = describe_failure(exc, self.account)
        upstream_reply = getattr(exc, "reply", None)
        self._failure_reply = (upstream_reply or reply).one_line()
        log.warning("smtp session %s: %s", self.conn.session_id, explanation,
                    extra={"account": self.account.name, "session": self.conn.session_id,
                           "client": self.conn.client_address, "protocol": "smtp",
                           "outcome": "upstream_error", "upstream_reply": self._failure_reply})
        self.failed = True
        self.observer.upstream_failure(self.account.name, "smtp", explanation)


class _ForwardedContent:
    """The client's content into an upstream sink; its end goes through the core."""

    def __init__(self, delivery: LiveSmtpDelivery, sink: UpstreamDataSink | UpstreamBdatSink) -> None:
        self.delivery = delivery
        self.sink = sink
        self.max_bytes = sink.max_bytes
        self.write = sink.write  # the per-chunk path: no extra call layer
        self.abandon = sink.abandon

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> SmtpReply:
        """The upstream's final reply (or ours), after the core's session rules."""
        return await self.delivery.content_done(await self.sink.finish(framer, tail), framer)

"""``delivery: spool`` on the delivery seam: MAIL/RCPT answered locally, the content stored durably.

`SpoolDelivery` implements `relay.smtp.delivery.Delivery`: MAIL and RCPT are checked here (size,
room in the spool, recipient count), the content is unstuffed and encrypted into the spool as it
arrives, and after the final dot the client hears ``250 2.0.0 queued as ID`` only once the store
has made the message durable (`relay.spool.store.SpoolStore.commit`). When it cannot (spool full,
disk full, a write error) the client hears ``452 4.3.1`` and keeps its message: never a false 250.

`SpoolingDeliveries` is the `DeliveryFactory` `relay.app` gives the SMTP server: accounts with
``delivery: spool`` get a `SpoolDelivery`, the others live forwarding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from relay.config.model import AccountConfig
from relay.errors import SpoolError, SpoolFull
from relay.smtp import replies
from relay.smtp.bdat import Unstuffer
from relay.smtp.dataframe import DataFramer, DataProblem
from relay.smtp.delivery import ConnectionInfo, ContentSink, Delivery, DeliveryFactory
from relay.smtp.reply import EhloCapabilities, SmtpReply
from relay.spool.entry import Envelope
from relay.spool.store import SpoolStore, SpoolWriter

log = logging.getLogger("relay.spool")

MAX_RECIPIENTS = 1000  # Exchange Online's ceiling per message (PROTOCOLS.md 9.3)
SPOOL_FULL = SmtpReply.make(452, "4.3.1", "Insufficient system storage: the relay's spool is full, "
                            "try again later")
SPOOL_WRITE_FAILED = SmtpReply.make(452, "4.3.1", "Insufficient system storage: the relay could not "
                                    "store the message, try again later")
TOO_MANY_RECIPIENTS = SmtpReply.make(452, "4.5.3", "Too many recipients")
RECIPIENT_OK = SmtpReply.make(250, "2.1.5", "Recipient OK")
_PROBLEM_REPLY = {DataProblem.TOO_BIG: replies.TOO_BIG, DataProblem.LINE_TOO_LONG: replies.LINE_TOO_LONG,
                  DataProblem.BARE_LINE_END: replies.BARE_LINE_END}
_KEPT_OPTIONS = ("BODY", "SMTPUTF8")


def queued(entry_id: str) -> SmtpReply:
    """The 250 after the final dot: stored durably as ``entry_id``."""
    return SmtpReply.make(250, "2.0.0", f"Ok: queued as {entry_id}")


class SpoolDelivery:
    """One connection's transactions for a spooled account."""

    def __init__(self, account: AccountConfig, conn: ConnectionInfo, store: SpoolStore,
                 max_message_bytes: int, clock: Callable[[], float]) -> None:
        self.account = account
        self.conn = conn
        self.store = store
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.sender: str | None = None
        self.options: dict[str, str] = {}
        self.recipients: list[str] = []
        self.messages = 0
        self.bytes = 0
        self.last: str | None = None
        self.capabilities: EhloCapabilities | None = None  # None: the listener's own extensions

    def size_limit(self) -> int:
        """Our own limit (the upstream's is not known while storing)."""
        return self.max_message_bytes

    def path_capabilities(self) -> EhloCapabilities | None:
        """The upstream's extensions when known (Graph's), else None: the listener's own."""
        return self.capabilities

    async def mail(self, sender: str, options: Mapping[str, str]) -> SmtpReply:
        """Checked locally: declared SIZE, and room in the spool."""
        size = options.get("SIZE", "")
        declared = int(size) if size.isascii() and size.isdigit() else 0
        if declared > self.max_message_bytes:
            return replies.TOO_BIG
        if not self.store.room_for(declared):
            self.last = SPOOL_FULL.one_line()
            return SPOOL_FULL
        self.sender, self.recipients = sender, []
        self.options = {k: v for k, v in options.items() if k in _KEPT_OPTIONS}
        return replies.SENDER_OK

    async def rcpt(self, address: str) -> SmtpReply:
        """Accepted locally (the upstream's verdict comes at delivery; a refusal becomes a DSN)."""
        if len(self.recipients) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        self.recipients.append(address)
        return RECIPIENT_OK

    async def open_content(self) -> ContentSink | SmtpReply:
        """A sink writing into the spool."""
        if self.sender is None or not self.recipients:
            return replies.NEED_RCPT
        envelope = Envelope(id=self.store.new_id(), account=self.account.name, sender=self.sender,
                            recipients=tuple(self.recipients), received_at=self.clock(),
                            mail_options=self.options)
        return _SpoolSink(self, self.store.begin(envelope), self.max_message_bytes)

    async def stored(self, writer: SpoolWriter) -> SmtpReply:
        """Commit a finished message; the client's final reply."""
        try:
            with self.conn.busy():
                await self.store.commit(writer)
        except SpoolFull as exc:
            log.error("smtp session %s: account %s: message refused with 452: %s", self.conn.session_id,
                      self.account.name, exc)
            return self._ended(SPOOL_FULL)
        except SpoolError as exc:
            log.error("smtp session %s: account %s: message refused with 452: %s", self.conn.session_id,
                      self.account.name, exc)
            return self._ended(SPOOL_WRITE_FAILED)
        self.messages += 1
        self.bytes += writer.size
        return self._ended(queued(writer.id))

    def _ended(self, reply: SmtpReply) -> SmtpReply:
        self.sender, self.recipients, self.last = None, [], reply.one_line()
        return reply

    async def reset(self) -> None:
        """RSET: forget the envelope."""
        self.sender, self.recipients = None, []

    async def quit(self) -> None:
        """Nothing upstream to end."""

    def close(self) -> None:
        """Nothing held open (an unfinished sink removes its own tmp file)."""

    def summary(self) -> tuple[int, int, str | None]:
        """(messages queued, their bytes, our last final reply)."""
        return self.messages, self.bytes, self.last


class _SpoolSink:
    """Dot-stuffed wire bytes in, unstuffed content into the spool writer."""

    def __init__(self, delivery: SpoolDelivery, writer: SpoolWriter, max_bytes: int) -> None:
        self.delivery = delivery
        self.writer = writer
        self.max_bytes = max_bytes
        self.unstuffer = Unstuffer()
        self.error: BaseException | None = None
        self.abandoned = False

    async def write(self, wire_bytes: bytes) -> None:
        """Unstuff and pass on; a write failure is kept for `finish`."""
        if self.abandoned or self.error is not None:
            return
        try:
            await self.writer.write(self.unstuffer.feed(wire_bytes))
        except OSError as exc:
            self.error = exc
            self.writer.discard()

    def abandon(self) -> None:
        """The client is gone or we refused the content: remove the tmp file."""
        if not self.abandoned:
            self.abandoned = True
            self.writer.discard()

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> SmtpReply:
        """Our refusal, 452 on a write failure, or the store's commit."""
        if framer.problem is not None:
            self.abandon()
            return self.delivery._ended(_PROBLEM_REPLY[framer.problem])
        await self.write(tail)
        if self.error is not None:
            log.error("smtp session %s: account %s: cannot write to the spool: %s",
                      self.delivery.conn.session_id, self.delivery.account.name, self.error)
            return self.delivery._ended(SPOOL_WRITE_FAILED)
        if self.abandoned:
            return self.delivery._ended(replies.UPSTREAM_CONNECTION_LOST)
        return await self.delivery.stored(self.writer)


def _graph_spool_delivery(account: AccountConfig, conn: ConnectionInfo, store: SpoolStore,
                          max_message_bytes: int, clock: Callable[[], float]) -> SpoolDelivery:
    """A spooled account that sends through Graph: Graph's size limit (refused at SIZE or the
    final dot, not bounced later) and Graph's path capabilities (8BITMIME, no SMTPUTF8)."""
    from relay.graph.send import GRAPH_CAPABILITIES, size_limit  # noqa: PLC0415 - only Graph relays

    assert account.graph is not None
    delivery = SpoolDelivery(account, conn, store, size_limit(account.graph, max_message_bytes), clock)
    delivery.capabilities = GRAPH_CAPABILITIES
    return delivery


class SpoolingDeliveries:
    """The `DeliveryFactory`: spool for ``delivery: spool`` accounts, else ``forward``'s."""

    def __init__(self, store: SpoolStore, forward: DeliveryFactory, *, max_message_bytes: int,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.forward = forward
        self.max_message_bytes = max_message_bytes
        self.clock = clock

    def __call__(self, account: AccountConfig, conn: ConnectionInfo) -> Delivery:
        """The delivery for ``account`` on this connection."""
        if account.delivery == "spool":
            if account.send_via == "graph" and account.graph is not None:
                return _graph_spool_delivery(account, conn, self.store, self.max_message_bytes, self.clock)
            return SpoolDelivery(account, conn, self.store, self.max_message_bytes, self.clock)
        return self.forward(account, conn)

    async def close(self) -> None:
        """Close live forwarding's shared parts; the store and worker belong to the app."""
        await self.forward.close()

"""The delivery seam: a Delivery other than live forwarding plugs into SmtpRelayServer through
`deliveries=` and the local SMTP side (AUTH, DATA framing, limits, replies) works unchanged.

The delivery here stores whole messages in memory and answers ``250 queued``, the shape a spool
has; it proves the interface carries what a spool and a Graph sender need (envelope, the whole
content, the final reply), not how either stores or sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from relay.config.model import AccountConfig
from relay.sandbox.loop import LoopThread
from relay.smtp.bdat import Unstuffer
from relay.smtp.dataframe import DataFramer
from relay.smtp.delivery import ConnectionInfo, ContentSink, Delivery
from relay.smtp.reply import EhloCapabilities, SmtpReply
from relay.smtp.server import SmtpRelayServer

from .conftest import DirectSmtpRelay, build_config, make_authenticator, seed_tokens_async

QUEUED = SmtpReply.make(250, "2.0.0", "queued")


@dataclass
class Stored:
    """One accepted message: account, envelope and unstuffed content."""

    account: str
    sender: str
    recipients: list[str]
    content: bytes


@dataclass
class _Sink:
    delivery: StoreDelivery
    max_bytes: int
    unstuffer: Unstuffer = field(default_factory=Unstuffer)
    parts: list[bytes] = field(default_factory=list)
    abandoned: bool = False

    async def write(self, wire_bytes: bytes) -> None:
        self.parts.append(self.unstuffer.feed(wire_bytes))

    def abandon(self) -> None:
        self.abandoned = True

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> SmtpReply:
        if framer.problem is not None or self.abandoned:
            return SmtpReply.make(554, "5.6.0", "refused")
        self.parts.append(self.unstuffer.feed(tail))
        return self.delivery.store(b"".join(self.parts))


@dataclass
class StoreDelivery:
    """Accepts every envelope locally and keeps the finished messages (test double of a spool)."""

    account: AccountConfig
    box: list[Stored]
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    messages: int = 0

    def size_limit(self) -> int:
        return 1_000_000

    def path_capabilities(self) -> EhloCapabilities | None:
        return None

    async def mail(self, sender: str, options: Mapping[str, str]) -> SmtpReply:
        self.sender, self.recipients = sender, []
        return SmtpReply.make(250, "2.1.0", "Sender OK")

    async def rcpt(self, address: str) -> SmtpReply:
        self.recipients.append(address)
        return SmtpReply.make(250, "2.1.5", "Recipient OK")

    async def open_content(self) -> ContentSink | SmtpReply:
        return _Sink(self, self.size_limit())

    def store(self, content: bytes) -> SmtpReply:
        assert self.sender is not None
        self.box.append(Stored(self.account.name, self.sender, list(self.recipients), content))
        self.messages += 1
        return QUEUED

    async def reset(self) -> None:
        self.sender, self.recipients = None, []

    async def quit(self) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self) -> tuple[int, int, str | None]:
        return self.messages, 0, None


@pytest.fixture
def store_relay(sandbox, tmp_path):  # type: ignore[no-untyped-def]
    """A relay whose accounts deliver into ``relay.box`` instead of the upstream.

    Built from SmtpRelayServer directly, not RelayApp: the point is plugging in a Delivery factory
    that no configuration selects (the seam spool and Graph use)."""
    config = build_config(sandbox, tmp_path)
    box: list[Stored] = []

    class Deliveries:
        closed = False

        def __call__(self, account: AccountConfig, conn: ConnectionInfo) -> Delivery:
            return StoreDelivery(account, box)

        async def close(self) -> None:
            self.closed = True

    deliveries = Deliveries()

    thread = LoopThread("relay-smtp-store-delivery").start()

    async def make():  # type: ignore[no-untyped-def]
        tokens = await seed_tokens_async(sandbox, config)
        server = SmtpRelayServer(config, tokens, make_authenticator(config), hostname="relay.test",
                                 deliveries=deliveries)
        await server.start()
        return server, tokens

    server, tokens = thread.run(make())
    relay = DirectSmtpRelay(config, sandbox, server, tokens, thread)
    relay.box = box  # type: ignore[attr-defined]
    yield relay
    relay.stop()
    assert deliveries.closed, "the factory is closed when the listener stops"


def test_another_delivery_plugs_in_without_touching_the_smtp_side(store_relay, sandbox):
    """AUTH, MAIL, RCPT, DATA with dot-stuffing and the final reply all go through the plugged-in
    delivery: it gets the envelope and the exact content, the client gets its 250 queued, and
    nothing reaches the upstream."""
    body = b"Subject: s\r\n\r\n.leading dot\r\nlast\r\n"
    with store_relay.smtp() as client:
        client.ehlo()
        client.mail("app@example.com")
        client.rcpt("a@example.com")
        client.rcpt("b@example.com")
        assert client.data(body) == (250, b"2.0.0 queued")
        ehlo = client.ehlo()[1].decode()
        assert "SIZE 1000000" in ehlo  # EHLO asks the delivery
    assert store_relay.box == [Stored("sales", "app@example.com", ["a@example.com", "b@example.com"],
                                      body)]
    assert sandbox.smtp.transcripts() == [] and sandbox.smtp.messages() == []

"""Messages over Graph's 4 MB request limit with ``large_messages: upload_session``: a draft
without the big attachments, the attachments uploaded (upload session in chunks, or one
fileAttachment), then send; the client hears 250 only after the send's 202."""

from __future__ import annotations

import random
from email.message import EmailMessage

from relay.graph.upload import CHUNK_BYTES
from relay.sandbox.graph_store import FileAttachment
from relay.sandbox.world import SandboxWorld

from .conftest import MAILBOX, StartGraphRelay


def big_message(attachment: bytes) -> tuple[bytes, bytes]:
    """(a message with a 5 MB binary attachment and a small PDF, the PDF's bytes)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = MAILBOX, "a@example.com", "report"
    msg.set_content("See attached.\n")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="big.bin")
    small = b"%PDF-1.4 small"
    msg.add_attachment(small, maintype="application", subtype="pdf", filename="small.pdf")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")), small


def test_large_message_goes_as_draft_plus_upload_session(start_graph_relay: StartGraphRelay,
                                                         world: SandboxWorld) -> None:
    """A 6.8 MB message: the draft keeps text and the small PDF, the 5 MB attachment arrives whole
    through an upload session in CHUNK_BYTES chunks (no Authorization on them), then send: 250."""
    relay = start_graph_relay(large_messages="upload_session")
    data = random.Random(7).randbytes(5_000_000)
    raw, small = big_message(data)
    with relay.smtp() as client:
        assert client.sendmail(MAILBOX, ["a@example.com"], raw) == {}
    [sent] = world.graph.mailboxes.sent
    assert sent.attachments == (FileAttachment("big.bin", "application/octet-stream", data),)
    assert b"See attached." in sent.mime and b"small.pdf" in sent.mime and b"big.bin" not in sent.mime
    assert b"JVBERi0xLjQgc21hbGw=" in sent.mime  # the small PDF stayed in the MIME (base64 of it)
    assert small
    log = world.graph.request_log()
    puts = [r for r in log if r[0] == "PUT"]
    assert [r[2] for r in puts] == [200] * (len(data) // CHUNK_BYTES) + [201]
    assert not any(r[1].endswith("/sendMail") for r in log)
    assert [r[2] for r in log if r[1].endswith("/send")] == [202]
    assert world.graph.mailboxes.folder(MAILBOX, "drafts") == []


def test_too_big_without_attachments_is_552(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """Nothing to detach (3.3 MB of text): 552 5.3.4 saying so; no draft, nothing sent."""
    relay = start_graph_relay(large_messages="upload_session")
    body = (b"t" * 76 + b"\r\n") * 42_000
    raw = f"From: {MAILBOX}\r\nTo: a@example.com\r\nSubject: long\r\n\r\n".encode() + body
    with relay.smtp() as client:
        client.mail(MAILBOX)
        client.rcpt("a@example.com")
        code, text = client.data(raw)
    assert code == 552 and b"no attachment" in text
    assert world.graph.sent() == [] and world.graph.request_log() == []


def test_failed_upload_deletes_the_draft(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """An upload chunk Graph refuses: the client gets a temporary 451 (it retries), the half-built
    draft is deleted and nothing is sent."""
    relay = start_graph_relay(large_messages="upload_session")
    world.graph.max_request_bytes = CHUNK_BYTES - 1  # the draft fits, a chunk does not
    raw, _ = big_message(random.Random(8).randbytes(4_000_000))
    with relay.smtp() as client:
        client.mail(MAILBOX)
        client.rcpt("a@example.com")
        code, _text = client.data(raw)
    assert code == 451
    assert world.graph.sent() == []
    assert world.graph.mailboxes.folder(MAILBOX, "drafts") == []
    assert any(r[0] == "DELETE" for r in world.graph.request_log())


def test_without_upload_session_large_is_refused(start_graph_relay: StartGraphRelay,
                                                 world: SandboxWorld) -> None:
    """The default (refuse): the same message gets 552 5.3.4 and Graph sees nothing."""
    relay = start_graph_relay()
    raw, _ = big_message(b"x" * 5_000_000)
    with relay.smtp() as client:
        client.mail(MAILBOX)
        client.rcpt("a@example.com")
        code, text = client.data(raw)
    assert code == 552 and b"5.3.4" in text
    assert world.graph.request_log() == []

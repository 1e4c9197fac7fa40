"""Sending through the fake Microsoft Graph with the real relay: smtplib -> RelayApp -> sendMail.

Every test asserts what Graph received byte for byte (or that it received nothing) and what the
SMTP client heard.
"""

from __future__ import annotations

import logging
import socket
import time
from email.message import EmailMessage

import pytest

from relay.explain import EXPLAINED_ONCE
from relay.sandbox.world import SandboxWorld

from .conftest import MAILBOX, StartGraphRelay

FROM = MAILBOX


def message(to: str = "a@example.com", body: bytes = b"Hello\r\n", **headers: str) -> bytes:
    """A small CRLF message from the mailbox."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"From: {FROM}\r\nTo: {to}\r\nSubject: test\r\n" + extra
    return head.encode() + b"\r\n" + body


def sent_requests(world: SandboxWorld) -> list[tuple[str, str, int]]:
    """The sendMail requests the fake Graph answered: (method, path, status)."""
    return [r for r in world.graph.request_log() if r[1].endswith("/sendMail")]


def test_mime_round_trip_is_byte_exact(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """8-bit text, a binary attachment, a 998-octet line and lines starting with dots reach Graph
    byte for byte, base64 in a text/plain body, and the client hears 250 only after the 202."""
    relay = start_graph_relay()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = FROM, "a@example.com", "Grüße"
    msg.set_content("Größe: 8-bit ünïcödé\n.leading dot\n..two dots\n" + "x" * 900 + "\n", cte="8bit")
    msg.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="octet-stream",
                       filename="blob.bin")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    long_line = b"L" * 998
    raw = raw.replace(b"x" * 900, long_line)
    assert b"\r\n" + long_line + b"\r\n" in raw
    with relay.smtp() as client:
        client.ehlo()
        assert client.has_extn("8bitmime")
        refused = client.sendmail(FROM, ["a@example.com"], raw, mail_options=["BODY=8BITMIME"])
        assert refused == {}
        assert client.noop()[0] == 250
    assert world.graph.sent() == [raw]
    [sent] = world.graph.mailboxes.sent
    assert sent.content_type == "text/plain" and sent.mailbox == MAILBOX
    assert sent_requests(world) == [("POST", f"/v1.0/users/{MAILBOX}/sendMail", 202)]


def test_envelope_only_recipients_are_added_as_bcc(start_graph_relay: StartGraphRelay,
                                                   world: SandboxWorld) -> None:
    """RCPTs missing from To/Cc/Bcc are added in one Bcc field at the end of the header; the rest of
    the message is unchanged."""
    relay = start_graph_relay()
    raw = message("A <a@example.com>", Cc="c@example.com")
    with relay.smtp() as client:
        client.sendmail(FROM, ["a@example.com", "hidden1@example.com", "c@example.com",
                               "Hidden2@example.com"], raw)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert world.graph.sent() == [head + b"\r\nBcc: hidden1@example.com,\r\n Hidden2@example.com\r\n\r\n"
                                  + body]


def test_existing_bcc_field_is_extended(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """A message that has a Bcc field keeps one: the envelope-only address is appended to it."""
    relay = start_graph_relay()
    raw = message(Bcc="b@example.com")
    with relay.smtp() as client:
        client.sendmail(FROM, ["a@example.com", "b@example.com", "x@example.com"], raw)
    assert world.graph.sent() == [raw.replace(b"Bcc: b@example.com\r\n",
                                              b"Bcc: b@example.com,\r\n x@example.com\r\n")]


def test_header_recipient_not_in_the_envelope_is_refused(start_graph_relay: StartGraphRelay,
                                                         world: SandboxWorld) -> None:
    """Graph would send to every header address: a To address the client did not RCPT makes the
    message refused (554 5.7.0, naming it), and nothing is sent."""
    relay = start_graph_relay()
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message("a@example.com, other@example.com"))
    assert code == 554 and b"5.7.0" in text and b"other@example.com" in text
    assert world.graph.sent() == [] and sent_requests(world) == []


def test_short_retry_after_is_waited_out(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """429 with Retry-After: 1 -> the relay waits that second and sends once more: 250, one message."""
    relay = start_graph_relay()
    world.graph.throttle(1, retry_after="1")
    with relay.smtp() as client:
        started = time.monotonic()
        client.sendmail(FROM, ["a@example.com"], message())
        elapsed = time.monotonic() - started
    assert elapsed >= 1.0
    assert world.graph.sent() == [message()]
    assert [r[2] for r in sent_requests(world)] == [429, 202]


@pytest.mark.parametrize("status", [429, 503])
def test_long_retry_after_is_451_and_honoured(start_graph_relay: StartGraphRelay, world: SandboxWorld,
                                             status: int) -> None:
    """429/503 with Retry-After: 120 -> 451 4.7.0 telling the wait; the next message within that time
    gets 451 at once without another request to Graph."""
    relay = start_graph_relay()
    world.graph.throttle(1, retry_after="120", status=status)
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message())
        assert (code, text.split(b" ")[0]) == (451, b"4.7.0") and b"120 seconds" in text
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message())
        assert code == 451 and b"4.7.0" in text
    assert [r[2] for r in sent_requests(world)] == [status]
    assert world.graph.sent() == []


def test_missing_permission_is_550_and_explained(start_graph_relay: StartGraphRelay, world: SandboxWorld,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A token without Mail.Send: 550 5.7.1, and the log names the account, Mail.Send and admin consent."""
    relay = start_graph_relay()
    world.graph.denied_permissions.add("Mail.Send")
    EXPLAINED_ONCE.forget("sales")
    caplog.set_level(logging.WARNING)
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message())
    assert code == 550 and b"5.7.1" in text and b"Mail.Send" in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "account 'sales'" in logged and "Mail.Send" in logged and "admin consent" in logged
    assert logged.count("[graph-access-denied]") == 1  # the explanation table's entry, once
    assert world.graph.sent() == []


def test_send_as_denied_is_550_with_the_fix(start_graph_relay: StartGraphRelay, world: SandboxWorld,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A From the mailbox may not send as: 550 5.7.1, and the log says to grant Send As or use the
    mailbox's address."""
    relay = start_graph_relay()
    caplog.set_level(logging.WARNING, logger="relay.graph")
    raw = message().replace(f"From: {FROM}".encode(), b"From: ceo@sandbox.test")
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(raw)
    assert code == 550 and b"5.7.1" in text and b"Send As" in text
    assert "Send As" in caplog.text and f"From: {MAILBOX}" in caplog.text
    world.graph.send_as[MAILBOX] = {"ceo@sandbox.test"}
    with relay.smtp() as client:
        assert client.sendmail(FROM, ["a@example.com"], raw) == {}
    assert world.graph.sent() == [raw]


def test_revoked_graph_token_is_refreshed_once(start_graph_relay: StartGraphRelay,
                                              world: SandboxWorld) -> None:
    """Graph answers 401 for a token that was revoked: the relay refreshes the Graph token once and
    the message goes through (250)."""
    relay = start_graph_relay()
    with relay.smtp() as client:
        client.sendmail(FROM, ["a@example.com"], message())
        world.oauth.revoke_all_access_tokens()
        client.sendmail(FROM, ["b@example.com"], message("b@example.com"))
    assert [r[2] for r in sent_requests(world)] == [202, 401, 202]
    assert len(world.graph.sent()) == 2


def test_wrong_audience_is_refreshed_once_then_454(start_graph_relay: StartGraphRelay, world: SandboxWorld,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Credentials whose Graph scopes yield an outlook.office.com token: 401 Invalid audience, one
    refresh, 401 again -> 454 4.7.0, and the log points at graph_scopes."""
    relay = start_graph_relay(credentials={"graph_scopes": ["https://outlook.office.com/SMTP.Send"]})
    caplog.set_level(logging.INFO)
    refreshes = world.oauth.counters.get("refresh_requests", 0)
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message())
    assert code == 454 and b"4.7.0" in text
    assert [r[2] for r in sent_requests(world)] == [401, 401]
    assert world.oauth.counters.get("refresh_requests", 0) - refreshes == 2  # the first and the forced one
    assert "graph_scopes" in caplog.text and "Invalid audience" in caplog.text


def test_declared_size_over_the_limit_is_refused_at_mail(start_graph_relay: StartGraphRelay,
                                                         world: SandboxWorld) -> None:
    """MAIL with a SIZE over Graph's limit gets 552 5.3.4 with the hint; EHLO then advertises the
    limit (the delivery exists from the first MAIL on), and a MAIL at the limit is accepted."""
    relay = start_graph_relay()
    limit = 4_000_000 // 4 * 3 - 16 * 1024
    with relay.smtp() as client:
        code, text = client.mail(FROM, [f"SIZE={limit + 1}"])
        assert code == 552 and b"5.3.4" in text and b"Microsoft Graph" in text
        client.ehlo()
        assert int(client.esmtp_features["size"]) == limit
        assert client.mail(FROM, [f"SIZE={limit}"])[0] == 250
    assert sent_requests(world) == []


def test_oversized_data_is_552_after_data(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """A message over the limit without SIZE: read to the end, 552 5.3.4, nothing sent."""
    relay = start_graph_relay(max_request_bytes=100_000)
    body = (b"y" * 76 + b"\r\n") * 1200  # ~94 KB: its base64 is over 100,000 bytes
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message(body=body))
        assert code == 552 and b"5.3.4" in text
        assert client.noop()[0] == 250
    assert sent_requests(world) == []


def test_graph_413_is_552(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """When Graph itself answers 413 (its limit lower than configured), the client hears 552 5.3.4."""
    relay = start_graph_relay()
    world.graph.max_request_bytes = 10_000
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message(body=b"z" * 70 + b"\r\n") * 200)
    assert code == 552 and b"5.3.4" in text
    assert [r[2] for r in sent_requests(world)] == [413]


def test_unknown_mailbox_is_451_naming_the_setting(start_graph_relay: StartGraphRelay, world: SandboxWorld,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Graph does not know the mailbox: 451 4.3.5 (the app retries once fixed), log names the setting."""
    relay = start_graph_relay()
    with world.graph.mailboxes.lock:
        world.graph.mailboxes.folders.clear()
    caplog.set_level(logging.WARNING, logger="relay.graph")
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message())
    assert code == 451 and b"4.3.5" in text
    assert "accounts.sales.mailbox" in caplog.text


def test_graph_unreachable_is_451(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """Nothing listens at the Graph URL: 451 4.4.1, the session stays usable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    relay = start_graph_relay(url=f"http://127.0.0.1:{dead_port}/v1.0")
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        code, text = client.data(message())
        assert code == 451 and b"4.4.1" in text
        assert client.noop()[0] == 250


def test_bad_input_gets_protocol_replies_and_sends_nothing(start_graph_relay: StartGraphRelay,
                                                          world: SandboxWorld) -> None:
    """A bare CR next to a dot, an over-long line, DATA without RCPT and RCPT without MAIL are
    refused as on the SMTP path, the session stays up, and Graph receives nothing."""
    relay = start_graph_relay()
    with relay.smtp() as client:
        assert client.docmd("RCPT TO:<a@example.com>")[0] == 503
        client.mail(FROM)
        assert client.docmd("DATA")[0] == 503
        client.rcpt("a@example.com")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(b"Subject: x\r\n\r\nbare\r.CR next to a dot\r\n.\r\n")
        assert client.getreply()[0] == 554
        client.mail(FROM)
        client.rcpt("a@example.com")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(b"Subject: x\r\n\r\n" + b"q" * 1200 + b"\r\n.\r\n")
        assert client.getreply()[0] == 500
        assert client.noop()[0] == 250
    assert sent_requests(world) == []


def test_bare_lf_is_normalized_before_graph(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """Under the default listen.smtp.bare_lf: normalize, a bare LF reaches Graph as CRLF."""
    relay = start_graph_relay()
    with relay.smtp() as client:
        client.mail(FROM)
        client.rcpt("a@example.com")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(message(body=b"bare\nLF\r\n") + b".\r\n")
        assert client.getreply()[0] == 250
    assert world.graph.sent() == [message(body=b"bare\r\nLF\r\n")]


def test_client_gone_mid_data_sends_nothing(start_graph_relay: StartGraphRelay, world: SandboxWorld) -> None:
    """A client that drops during DATA: nothing reaches Graph; the relay serves the next client."""
    relay = start_graph_relay()
    client = relay.smtp()
    client.mail(FROM)
    client.rcpt("a@example.com")
    client.putcmd("DATA")
    assert client.getreply()[0] == 354
    client.send(message())  # no final dot
    client.close()  # both the socket and its file: the connection really drops, no QUIT
    with relay.smtp() as second:
        assert second.sendmail(FROM, ["a@example.com"], message()) == {}
    assert world.graph.sent() == [message()]



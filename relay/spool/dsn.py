"""RFC 3464 delivery status notifications (multipart/report) for spooled mail that failed (pure).

A DSN goes to the envelope sender (or ``spool.bounce_to``) through the same account; it says which
recipients failed, with the upstream's reply (``Diagnostic-Code``) or the expiry
(``Status: 4.4.7``), and carries the original message's headers (``text/rfc822-headers``).
A message with the null sender never gets one, and a DSN itself never bounces.
"""

from __future__ import annotations

import email.utils
import os
from collections.abc import Mapping
from dataclasses import dataclass

from relay.spool.entry import Envelope

EXPIRED_STATUS = "4.4.7"
HEADER_LIMIT = 64 * 1024


@dataclass(frozen=True)
class RecipientFailure:
    """One recipient the message could not be delivered to."""

    status: str  # RFC 3463 code, e.g. 5.1.1
    diagnostic: str | None  # the upstream's reply on one line, e.g. "550 5.1.1 no such user"


def status_of(reply_line: str) -> str:
    """The RFC 3463 status in an upstream reply line, else the class digit's generic one."""
    parts = reply_line.split()
    if len(parts) >= 2 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    return "5.0.0" if reply_line.startswith("5") else "4.0.0"


def original_headers(content: bytes) -> bytes:
    """The header block of a message (up to the first empty line, at most `HEADER_LIMIT`)."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[:end + 2]
    return head[:HEADER_LIMIT]


def _date(epoch: float) -> str:
    return email.utils.formatdate(epoch, localtime=False)


def _human_text(envelope: Envelope, failures: Mapping[str, RecipientFailure], expired: bool) -> str:
    lines = ["This is the mail relay for " f"account {envelope.account}.", ""]
    if expired:
        lines.append("Your message could not be delivered in time to these recipients; the relay "
                     "gave up (spool.max_age):")
    else:
        lines.append("Your message could not be delivered to these recipients; the receiving "
                     "server refused it permanently:")
    lines.append("")
    for recipient, failure in failures.items():
        lines.append(f"  <{recipient}>: {failure.diagnostic or failure.status}")
    lines += ["", "The headers of your message are attached."]
    return "\r\n".join(lines)


def build_dsn(envelope: Envelope, failures: Mapping[str, RecipientFailure], *, content: bytes,
              from_address: str, to_address: str, reporting_host: str, now: float,
              expired: bool = False) -> bytes:
    """The DSN message (CRLF line ends) for ``failures`` of ``envelope``."""
    boundary = f"=_dsn_{os.urandom(12).hex()}"
    head = [
        f"From: Mail Delivery System <{from_address}>",
        f"To: <{to_address}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {_date(now)}",
        f"Message-ID: <{envelope.id}.dsn.{os.urandom(4).hex()}@{reporting_host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
    ]
    status = [f"Reporting-MTA: dns; {reporting_host}",
              f"X-Relay-Queue-ID: {envelope.id}",
              f"Arrival-Date: {_date(envelope.received_at)}"]
    for recipient, failure in failures.items():
        status += ["", f"Final-Recipient: rfc822; {recipient}", "Action: failed",
                   f"Status: {failure.status}"]
        if failure.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {failure.diagnostic}")
        status.append(f"Last-Attempt-Date: {_date(now)}")
    parts = [
        "\r\n".join(head).encode(),
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Description: Notification\r\n\r\n{_human_text(envelope, failures, expired)}".encode(),
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n"
        f"Content-Description: Delivery report\r\n\r\n".encode() + "\r\n".join(status).encode(),
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n"
        f"Content-Description: Undelivered message headers\r\n\r\n".encode() + original_headers(content),
        f"--{boundary}--".encode(),
    ]
    return b"\r\n".join(parts) + b"\r\n"

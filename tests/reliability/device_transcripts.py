"""SMTP dialogs of device families that trip servers, byte for byte, replayed by
test_rel_legacy_devices.py.

Each transcript is what such a device writes, step by step, and the reply codes it waits for.
They are written from the devices' documented and commonly reported behaviour (vendor manuals,
Postfix's ``broken_sasl_auth_clients`` and ``smtpd_forbid_bare_newline`` notes), not captured
from hardware here. ``{plain}``, ``{user}`` and ``{password}`` are replaced by the base64 of the
test login; every message goes to ``to@x.test``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """Bytes the device writes in one go, then the reply codes it reads (in order)."""

    send: bytes
    expect: tuple[str, ...]


@dataclass(frozen=True)
class Transcript:
    """One device family's dialog and the message the upstream must then hold, byte-exact."""

    family: str
    steps: tuple[Step, ...]
    delivered: bytes | None


TRANSCRIPTS = (
    Transcript(
        "bare-LF script or embedded writer (printf/nc, busybox sendmail -S, old Unix tools)",
        (
            Step(b"EHLO box\n", ("250",)),
            Step(b"AUTH PLAIN {plain}\n", ("235",)),
            Step(b"MAIL FROM:<box@x.test>\n", ("250",)),
            Step(b"RCPT TO:<to@x.test>\n", ("250",)),
            Step(b"DATA\n", ("354",)),
            Step(b"Subject: status\n\nall good\n.\n", ("250",)),
            Step(b"QUIT\n", ("221",)),
        ),
        b"Subject: status\r\n\r\nall good\r\n",
    ),
    Transcript(
        "HELO-only printer/scanner (multifunction devices' scan-to-email, HELO then AUTH LOGIN)",
        (
            Step(b"HELO MFP-3F2A1C\r\n", ("250",)),
            Step(b"AUTH LOGIN\r\n", ("334",)),
            Step(b"{user}\r\n", ("334",)),
            Step(b"{password}\r\n", ("235",)),
            Step(b"MAIL FROM: <scanner@x.test>\r\n", ("250",)),
            Step(b"RCPT TO: <to@x.test>\r\n", ("250",)),
            Step(b"DATA\r\n", ("354",)),
            Step(b"From: scanner@x.test\r\nSubject: Scan\r\n\r\nscan.pdf attached\r\n.\r\n", ("250",)),
            Step(b"QUIT\r\n", ("221",)),
        ),
        b"From: scanner@x.test\r\nSubject: Scan\r\n\r\nscan.pdf attached\r\n",
    ),
    Transcript(
        "lower-case, pipelined LOGIN-prompt parser (old firmware: waits for 'Username:'/'Password:')",
        (
            Step(b"ehlo ups-card\r\n", ("250",)),
            Step(b"auth login\r\n", ("334 VXNlcm5hbWU6",)),
            Step(b"{user}\r\n", ("334 UGFzc3dvcmQ6",)),
            Step(b"{password}\r\n", ("235",)),
            Step(b"mail from:<ups@x.test>\r\nrcpt to:<to@x.test>\r\ndata\r\n", ("250", "250", "354")),
            Step(b"Subject: on battery\r\n\r\n\xe9v\xe9nement 8-bit\r\n.\r\nquit\r\n", ("250", "221")),
        ),
        b"Subject: on battery\r\n\r\n\xe9v\xe9nement 8-bit\r\n",
    ),
    Transcript(
        "HELO + AUTH PLAIN with the credentials as initial response, then QUIT without waiting",
        (
            Step(b"HELO nas\r\n", ("250",)),
            Step(b"AUTH plain {plain}\r\n", ("235",)),
            Step(b"MAIL FROM:nas@x.test\r\n", ("250",)),
            Step(b"RCPT TO:to@x.test\r\n", ("250",)),
            Step(b"DATA\r\n", ("354",)),
            Step(b"Subject: backup done\r\n\r\nok\r\n.\r\nQUIT\r\n", ("250", "221")),
        ),
        b"Subject: backup done\r\n\r\nok\r\n",
    ),
)

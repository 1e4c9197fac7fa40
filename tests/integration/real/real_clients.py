"""Client-side helpers for the real-server tests: XOAUTH2 over smtplib/poplib, msmtp, messages.

Debian 12's swaks (20201014.0) has no XOAUTH2 (it arrived in swaks 20240103), so XOAUTH2 against
Postfix is driven by msmtp (``--auth=xoauth2``) and by Python's smtplib with a raw transcript.
"""

from __future__ import annotations

import email.utils
import poplib
import smtplib
import ssl
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from real_servers import require_program

from relay.sasl import encode_xoauth2

TIMEOUT_S = 30.0


def trusting_context(cert_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts exactly the test certificate (host name checked)."""
    ctx = ssl.create_default_context(cafile=str(cert_file))
    return ctx


@dataclass(frozen=True)
class AuthOutcome:
    """Every server reply of one SASL exchange, in order, as (code or marker, text)."""

    replies: list[tuple[str, str]]

    @property
    def final(self) -> tuple[str, str]:
        """The last reply."""
        return self.replies[-1]


def smtp_xoauth2(port: int, cert_file: Path, mailbox: str, token: str) -> tuple[AuthOutcome, smtplib.SMTP]:
    """STARTTLS, then two-step AUTH XOAUTH2; answer an error challenge with an empty line.

    Returns the replies and the still-open connection (the caller quits it).
    """
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT_S)
    smtp.ehlo("client.test")
    smtp.starttls(context=trusting_context(cert_file))
    smtp.ehlo("client.test")
    replies: list[tuple[str, str]] = []
    code, text = smtp.docmd("AUTH", "XOAUTH2")
    replies.append((str(code), text.decode()))
    if code == 334:
        code, text = smtp.docmd(encode_xoauth2(mailbox, token))
        replies.append((str(code), text.decode()))
        if code == 334:
            code, text = smtp.docmd("")
            replies.append((str(code), text.decode()))
    return AuthOutcome(replies), smtp


def pop3_connect(port: int, cert_file: Path, *, implicit_tls: bool) -> poplib.POP3:
    """Connect to a POP3 server with TLS on connect (pop3s) or with STLS."""
    ctx = trusting_context(cert_file)
    if implicit_tls:
        return poplib.POP3_SSL("127.0.0.1", port, timeout=TIMEOUT_S, context=ctx)
    pop = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT_S)
    pop.stls(context=ctx)
    return pop


def pop3_xoauth2(pop: poplib.POP3, mailbox: str, token: str) -> AuthOutcome:
    """Two-step AUTH XOAUTH2 (RFC 5034); answer an error challenge with an empty line."""
    replies: list[tuple[str, str]] = []

    def send(line: str) -> bytes:
        try:
            resp = pop._shortcmd(line)
        except poplib.error_proto as exc:
            resp = exc.args[0] if isinstance(exc.args[0], bytes) else str(exc.args[0]).encode()
        replies.append(("pop3", resp.decode()))
        return resp

    if send("AUTH XOAUTH2").startswith(b"+ ") or replies[-1][1] == "+":
        resp = send(encode_xoauth2(mailbox, token))
        if resp.startswith(b"+ ") or resp == b"+":
            send("")
    return AuthOutcome(replies)


def make_message(subject: str, body_lines: int = 3, sender: str = "sender@example.org",
                 to: str = "rcpt@example.com") -> bytes:
    """A small RFC 5322 message with a unique Message-ID and lines that need dot-stuffing.

    Date and Message-ID are present so no server in the path adds them.
    """
    lines = [f"From: <{sender}>", f"To: <{to}>", f"Subject: {subject}",
             f"Date: {email.utils.formatdate(localtime=False)}",
             f"Message-ID: <{uuid.uuid4().hex}@client.test>", "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=us-ascii", ""]
    lines += [f"line {i} of {subject}" for i in range(body_lines)]
    lines += [".starts with a dot", "..two dots", "end"]
    return ("\r\n".join(lines) + "\r\n").encode()


def run_client(args: list[str], stdin: bytes | None = None, timeout_s: float = 60.0,
               package: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a real client program (found via require_program) and capture its output."""
    program = require_program(args[0], package)
    return subprocess.run([program, *args[1:]], input=stdin, capture_output=True, timeout=timeout_s,
                          check=False)


def msmtp_xoauth2(port: int, cert_file: Path, mailbox: str, token: str, *, rcpt: str,
                  message: bytes) -> subprocess.CompletedProcess[bytes]:
    """Send ``message`` with msmtp over STARTTLS and AUTH XOAUTH2 (token given via passwordeval)."""
    return run_client([
        "msmtp", "-v", "--host=127.0.0.1", f"--port={port}", "--tls=on", "--tls-starttls=on",
        f"--tls-trust-file={cert_file}", "--auth=xoauth2", f"--user={mailbox}",
        f"--passwordeval=printf %s {token}", f"--from={mailbox}", "--", rcpt,
    ], stdin=message)

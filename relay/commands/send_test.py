"""`relay send-test ACCOUNT --to ADDR`: send a test message through the running relay.

Logs in to the relay's own SMTP listener exactly like a legacy app would (the account's local
username and password), so it proves the whole path: local login, token, upstream XOAUTH2 and
delivery. The relay's reply (the upstream's own) is printed.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relay.commands._ops import add_config_argument, connect_host, load_config_file
from relay.config.model import ListenerConfig
from relay.errors import ConfigError

if TYPE_CHECKING:  # every command module is imported by `relay serve` too: no mail client there
    import smtplib
    from email.message import EmailMessage


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `relay send-test` to the CLI."""
    p = subparsers.add_parser("send-test", help="send a test message through the running relay")
    p.add_argument("account", help="the account to send as (a key under accounts:)")
    p.add_argument("--to", required=True, metavar="ADDR", help="the recipient")
    add_config_argument(p)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the account's local password from standard input (else it is prompted; "
                        "needed without a terminal: cron, CI, containers)")
    p.add_argument("--subject", default="xoauth2-relay test message")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="SMTP timeout in seconds (60)")
    p.set_defaults(func=cmd_send_test)


def build_message(sender: str, recipient: str, subject: str) -> EmailMessage:
    """The test message: plain text saying where it came from and when."""
    from email.message import EmailMessage  # noqa: PLC0415 - see TYPE_CHECKING above
    from email.utils import format_datetime, make_msgid  # noqa: PLC0415

    now = datetime.now(UTC)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(f"This test message was sent through xoauth2-relay on {socket.gethostname()} at "
                    f"{now.isoformat(timespec='seconds')}.\nIf you can read it, sending works.\n")
    return msg


def open_smtp(listener: ListenerConfig, timeout_s: float) -> smtplib.SMTP:
    """Connect to the relay's SMTP listener (with TLS when the listener uses it)."""
    import smtplib  # noqa: PLC0415 - see TYPE_CHECKING above

    host = connect_host(listener.host)
    # The local hop to our own listener, often with a self-signed certificate.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if listener.tls == "implicit":
        return smtplib.SMTP_SSL(host, listener.port, timeout=timeout_s, context=ctx)
    client = smtplib.SMTP(host, listener.port, timeout=timeout_s)
    if listener.tls == "starttls":
        client.starttls(context=ctx)
    return client


def cmd_send_test(args: argparse.Namespace) -> int:
    """Send one message as ACCOUNT to --to via the running relay; 0 when the relay says 250."""
    import getpass  # noqa: PLC0415 - see TYPE_CHECKING above
    import smtplib  # noqa: PLC0415

    config = load_config_file(args.config)
    account = config.accounts.get(args.account)
    if account is None:
        raise ConfigError(f"accounts.{args.account}", f"no account '{args.account}' in {args.config} "
                          f"(accounts: {', '.join(config.accounts) or 'none'})")
    listener = config.listen.smtp
    if not listener.enabled:
        raise ConfigError("listen.smtp.enabled", "the SMTP listener is disabled; nothing to send through")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ConfigError("--password-stdin", "standard input gave no password (it is empty or closed); "
                              f"pipe the local password of {account.username} into the command")
    elif not sys.stdin.isatty():
        raise ConfigError("--password-stdin", "there is no terminal to ask for the password; pass "
                          "--password-stdin and pipe the password into the command")
    else:
        password = getpass.getpass(f"Local password of {account.username}: ")
    where = f"{connect_host(listener.host)}:{listener.port}"
    msg = build_message(account.mailbox, args.to, args.subject)
    print(f"Sending a test message from {account.mailbox} to {args.to} through the relay at {where} "
          f"(login {account.username}) ...")
    try:
        with open_smtp(listener, args.timeout) as client:
            client.login(account.username, password)
            refused = client.send_message(msg)
    except smtplib.SMTPAuthenticationError as exc:
        print(f"The relay refused the local login of {account.username}: {_reply(exc)}\n"
              f"Fix: check the password against accounts.{account.name}.password_hash "
              "(`relay hash-password` makes a new hash).", file=sys.stderr)
        return 1
    except smtplib.SMTPRecipientsRefused as exc:
        for rcpt, (code, text) in exc.recipients.items():
            print(f"Refused {rcpt}: {code} {text.decode(errors='replace')}", file=sys.stderr)
        return 1
    except smtplib.SMTPResponseException as exc:
        print(f"The relay answered {_reply(exc)}\nRun `relay check -c {args.config} {account.name}` "
              "to see what the upstream says.", file=sys.stderr)
        return 1
    except (OSError, smtplib.SMTPException) as exc:
        print(f"Cannot talk to the relay at {where}: {exc}\nIs `relay serve` running with this "
              "configuration? (`relay health` checks it.)", file=sys.stderr)
        return 1
    for rcpt, (code, text) in refused.items():
        print(f"Refused {rcpt}: {code} {text.decode(errors='replace')}", file=sys.stderr)
    if refused:
        return 1
    print(f"Sent: the upstream accepted the message for {args.to} (Message-ID {msg['Message-ID']}).")
    return 0


def _reply(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
    return f"{exc.smtp_code} {text}"

"""Send one message upstream as an account, with the account's own token.

Used by the alerts' email channel and the admin page's "Send test message"; both layers import
it from here (neither imports the other for it). Any failure is an `AlertDeliveryError`.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from relay.config.model import AccountConfig, RelayConfig
from relay.errors import RelayError

if TYPE_CHECKING:
    from relay.tokens.source import TokenSource


class AlertDeliveryError(RelayError):
    """An alert (or a test message) could not be delivered on one channel."""


async def send_upstream_message(config: RelayConfig, tokens: TokenSource, account: AccountConfig,
                                to: tuple[str, ...], subject: str = "", text: str = "", *,
                                msg: EmailMessage | None = None) -> str:
    """Send a message upstream as ``account`` with its own token; the upstream's final reply.

    Raises AlertDeliveryError naming the account and the upstream's answer when anything fails.
    """
    from relay.smtp.commandline import rcpt_command  # noqa: PLC0415
    from relay.smtp.upstream import UpstreamSmtpSession  # noqa: PLC0415

    if account.smtp is None:
        raise AlertDeliveryError(f"account {account.name} has no smtp upstream")
    if msg is None:
        msg = EmailMessage()
        msg["From"] = account.mailbox
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(domain=account.mailbox.rpartition("@")[2] or None)
        msg.set_content(text)
    sender = str(msg["From"])
    limits = config.limits
    up = UpstreamSmtpSession(account.smtp, account=account.name, local_hostname=socket.getfqdn(),
                             connect_timeout_s=limits.upstream_connect_timeout_s,
                             command_timeout_s=limits.upstream_command_timeout_s,
                             data_timeout_s=limits.upstream_data_timeout_s)
    try:
        token = await tokens.get_token(account.name)
        await up.connect()
        await up.authenticate(account.mailbox, token)
        reply = await up.mail(sender)
        if reply.is_positive:
            for rcpt in to:
                reply = await up.send_command(rcpt_command(rcpt), "RCPT")
                if not reply.is_positive:
                    break
        if reply.is_positive:
            content = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            reply = await up.send_data(content)
        if not reply.is_positive:
            raise AlertDeliveryError(f"email through account {account.name}: the upstream answered "
                                     f"{reply.one_line()}")
        await up.quit()
        return reply.one_line()
    except (RelayError, OSError) as exc:
        up.abort()
        if isinstance(exc, AlertDeliveryError):
            raise
        raise AlertDeliveryError(f"email through account {account.name}: {exc}") from None

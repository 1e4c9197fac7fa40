"""`ConnectionState`: what the relay keeps per SMTP client connection (survives STARTTLS)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relay.config.model import AccountConfig

if TYPE_CHECKING:
    from relay.smtp.delivery import Delivery


@dataclass
class ConnectionState:
    """Per-connection relay state; unlike aiosmtpd's Session it survives STARTTLS."""

    session_id: str = field(default_factory=lambda: secrets.token_hex(4))
    client_address: str = "?"
    client_ip: str = ""
    started: float = field(default_factory=time.monotonic)
    account: AccountConfig | None = None
    delivery: Delivery | None = None  # the account's transactions (relay.smtp.delivery)
    messages: int = 0  # of deliveries already ended (STARTTLS, another login), for the summary
    bytes: int = 0
    last_upstream_reply: str | None = None
    outcome: str = "ok"  # the session's outcome for metrics: ok | auth_failed | upstream_error

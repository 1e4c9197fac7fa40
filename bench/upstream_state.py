"""What the bench upstream knows and counts: issued tokens, accepted messages, the POP3 mailbox.

Plain in-memory state shared by the SMTP, POP3 and HTTP servers of one upstream process.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass, field

from bench.content import mailbox_message, stuff

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"  # noqa: S105 - a loopback benchmark credential
TOKEN_CHARS = 1600  # real Microsoft/Google access tokens are 1.5-2.5 KB (PROTOCOLS.md 1)


@dataclass
class Mailbox:
    """The mailbox every POP3/IMAP session sees: pre-built responses and content digests."""

    size: int = 0
    retr_wire: list[bytes] = field(default_factory=list)  # "+OK ...\r\n" + stuffed + ".\r\n"
    octets: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    contents: list[bytes] = field(default_factory=list)  # raw, for IMAP FETCH literals

    @classmethod
    def build(cls, count: int, size: int) -> Mailbox:
        """Make ``count`` messages of about ``size`` bytes."""
        box = cls(size=size)
        for index in range(1, count + 1):
            content = mailbox_message(size, index)
            box.octets.append(len(content))
            box.digests.append(hashlib.sha256(content).hexdigest())
            box.retr_wire.append(b"+OK %d octets\r\n" % len(content) + stuff(content) + b".\r\n")
            box.contents.append(content)
        return box


@dataclass
class UpstreamState:
    """Counters, tokens and delivered-message digests of one bench upstream."""

    latency_s: float = 0.0
    issued: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    delivered: list[str] = field(default_factory=list)  # envelope digests, in arrival order
    mailbox: Mailbox = field(default_factory=Mailbox)

    def issue_token(self) -> str:
        """Return a new access token this upstream accepts."""
        token = "bench." + secrets.token_urlsafe(TOKEN_CHARS * 3 // 4)[: TOKEN_CHARS - 6]
        self.issued.add(token)
        return token

    def issue_refresh_token(self) -> str:
        """Return a new refresh token for the refresh_token grant."""
        token = "bench-refresh." + secrets.token_urlsafe(24)
        self.refresh_tokens.add(token)
        return token

    def token_valid(self, token: str) -> bool:
        """True for tokens this upstream issued."""
        return token in self.issued

    def reset(self) -> None:
        """Forget counters and delivered messages (issued tokens stay valid)."""
        self.counts.clear()
        self.delivered.clear()

    def stats(self) -> dict[str, object]:
        """Counters as JSON-able data."""
        return {"counts": dict(self.counts), "delivered": len(self.delivered),
                "latency_ms": round(self.latency_s * 1000, 3)}

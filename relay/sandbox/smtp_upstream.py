"""`SandboxSmtpServer`: an upstream submission server that behaves like Exchange Online / Gmail.

STARTTLS (587-style) by default, AUTH XOAUTH2 / OAUTHBEARER checked against the sandbox OAuth
provider, PIPELINING and CHUNKING (RFC 3030 BDAT), every accepted message stored byte-exact with its
envelope. Fault switches are plain attributes, safe to set from any thread. Each connection's
commands are recorded with the client turn they arrived in (`SandboxSmtpServer.transcripts`), so
tests can count the round trips a client needed.
"""

from __future__ import annotations

import asyncio

from relay.sandbox.smtp_session import SandboxSmtpSession
from relay.sandbox.smtp_state import (
    CONCURRENCY_REFUSAL,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_LINE_BYTES,
    MESSAGE_ENDS,
    AuthFailureStyle,
    SandboxSmtpState,
    SmtpTlsMode,
    StoredMessage,
    Transcript,
    token_matcher,
)

# Re-exported: tests and the other sandbox servers import these from here.
__all__ = ["CONCURRENCY_REFUSAL", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_LINE_BYTES", "MESSAGE_ENDS",
           "AuthFailureStyle", "SandboxSmtpServer", "SmtpTlsMode", "StoredMessage", "Transcript",
           "token_matcher"]


class SandboxSmtpServer(SandboxSmtpState):
    """A loopback SMTP submission server with XOAUTH2 and fault switches.

    ``validate_token(token) -> mailbox | None`` is usually `SandboxOAuthProvider.validate_access_token`;
    ``authorize(token, mailbox) -> bool``, when given, decides instead (app-only mailbox sets).
    The constructor, fault switches and records are in `relay.sandbox.smtp_state`; each connection
    is a `relay.sandbox.smtp_session.SandboxSmtpSession`.
    """

    name = "smtp"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one SMTP session."""
        session = SandboxSmtpSession(self, reader, writer)
        try:
            await session.run()
        finally:
            if session.user is not None:
                self._session_ended(session.user)

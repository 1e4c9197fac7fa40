"""The sandbox mail world: a loopback OAuth 2.0 provider and upstream SMTP/POP3 servers.

Used by integration tests, `relay demo`, benchmarks and ``python -m relay.sandbox``; it never
touches the internet. Start everything with ``with SandboxWorld.start() as world: ...``.
"""

from relay.sandbox.oauth import ANY_MAILBOX, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SandboxOAuthProvider
from relay.sandbox.pop3_upstream import SandboxPop3Server
from relay.sandbox.smtp_upstream import SandboxSmtpServer, StoredMessage
from relay.sandbox.world import SandboxWorld

__all__ = ["ANY_MAILBOX", "DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "SandboxOAuthProvider",
           "SandboxPop3Server", "SandboxSmtpServer", "SandboxWorld", "StoredMessage"]

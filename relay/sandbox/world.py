"""`SandboxWorld`: the OAuth provider, upstream SMTP (STARTTLS), POP3 and IMAP (TLS on connect)
and a fake Microsoft Graph mail API (plain HTTP on loopback) together.

All of them run on one background loop thread, on 127.0.0.1 port 0 unless ports are given, with a
fresh self-signed certificate (``ca_file``) that the relay's upstream endpoints trust.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from relay.sandbox.graph import GRAPH_SCOPES, SandboxGraphServer
from relay.sandbox.imap_upstream import SandboxImapServer
from relay.sandbox.loop import LoopThread
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_SCOPE, SandboxOAuthProvider
from relay.sandbox.pop3_upstream import SandboxPop3Server
from relay.sandbox.smtp_upstream import SandboxSmtpServer
from relay.tlsutil import generate_self_signed


class SandboxWorld:
    """A running sandbox mail world; use ``with SandboxWorld.start() as world:``."""

    def __init__(self, tmp_dir: Path | None = None, *, token_lifetime_s: int = 3600,
                 smtp_port: int = 0, pop3_port: int = 0, oauth_port: int = 0, imap_port: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self._own_dir = tmp_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="relay-sandbox-")) if tmp_dir is None else Path(tmp_dir)
        self.cert_file, self.key_file = generate_self_signed(self.dir / "tls")
        self.oauth = SandboxOAuthProvider(port=oauth_port, token_lifetime_s=token_lifetime_s, clock=clock)
        self.smtp = SandboxSmtpServer(self.oauth.validate_access_token, self.cert_file, self.key_file,
                                      port=smtp_port, tls_mode="starttls", authorize=self.oauth.token_allows)
        self.pop3 = SandboxPop3Server(self.oauth.validate_access_token, self.cert_file, self.key_file,
                                      port=pop3_port, tls_mode="implicit", authorize=self.oauth.token_allows)
        # IMAP reads the POP3 maildrops: mail sent through the sandbox SMTP server shows up in both.
        self.imap = SandboxImapServer(self.oauth.validate_access_token, self.cert_file, self.key_file,
                                      lambda user: [m for _, m in self.pop3.mailbox(user)],
                                      port=imap_port, authorize=self.oauth.token_allows)
        self.graph = SandboxGraphServer(self.oauth)
        self._loop: LoopThread | None = None

    @classmethod
    def start(cls, tmp_dir: Path | None = None, **options: Any) -> Self:
        """Create and start a world (options: token_lifetime_s, smtp_port, pop3_port, oauth_port, clock)."""
        return cls(tmp_dir, **options).run()

    def run(self) -> Self:
        """Start the loop thread and the three servers."""
        if self._loop is not None:
            return self
        self._loop = LoopThread("sandbox-world").start()
        try:
            for server in (self.oauth, self.smtp, self.pop3, self.imap, self.graph):
                server.start(self._loop)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server and the loop thread; remove the temporary directory. Idempotent."""
        loop, self._loop = self._loop, None
        for server in (self.graph, self.imap, self.pop3, self.smtp, self.oauth):
            server.stop()
        if loop is not None:
            loop.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.run()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses ----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address every sandbox server listens on."""
        return "127.0.0.1"

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate; pass it as ``ca_file`` to trust the upstreams."""
        return self.cert_file

    @property
    def smtp_port(self) -> int:
        """Upstream SMTP port (STARTTLS)."""
        return self.smtp.port

    @property
    def pop3_port(self) -> int:
        """Upstream POP3 port (TLS on connect)."""
        return self.pop3.port

    @property
    def imap_port(self) -> int:
        """Upstream IMAP port (TLS on connect)."""
        return self.imap.port

    @property
    def oauth_port(self) -> int:
        """OAuth provider port (plain HTTP)."""
        return self.oauth.port

    def describe(self) -> dict[str, object]:
        """URLs, ports and files as a JSON-ready dict (printed by ``python -m relay.sandbox``)."""
        return {
            "host": self.host, "smtp_port": self.smtp_port, "pop3_port": self.pop3_port,
            "imap_port": self.imap_port, "oauth_port": self.oauth_port, "oauth_url": self.oauth.url,
            "token_url": self.oauth.token_url,
            "authorize_url": self.oauth.authorize_url,
            "device_authorization_url": self.oauth.device_authorization_url,
            "revocation_url": self.oauth.revocation_url, "introspection_url": self.oauth.introspection_url,
            "graph_url": self.graph.url, "ca_file": str(self.ca_file), "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        }

    # --- config helpers -----------------------------------------------------------------------

    def credentials_yaml(self, name: str = "sandbox", flow: str = "authorization_code",
                         client_id: str = DEFAULT_CLIENT_ID,
                         client_secret: str | None = DEFAULT_CLIENT_SECRET) -> dict[str, dict[str, object]]:
        """``{name: {...}}`` for the YAML ``credentials:`` section: a generic provider at this sandbox."""
        creds: dict[str, object] = {
            "provider": "generic", "client_id": client_id, "flow": flow,
            "scopes": DEFAULT_SCOPE.split(), "graph_scopes": list(GRAPH_SCOPES),
            "token_url": self.oauth.token_url, "authorize_url": self.oauth.authorize_url,
            "device_authorization_url": self.oauth.device_authorization_url,
            "revocation_url": self.oauth.revocation_url,
        }
        if client_secret is not None:
            creds["client_secret"] = client_secret
        return {name: creds}

    def account_yaml(self, username: str, password_hash: str | None, mailbox: str,
                     credentials: str = "sandbox") -> dict[str, object]:
        """One account's mapping (the value under ``accounts.<name>``) using the sandbox upstreams."""
        ca = str(self.ca_file)
        return {
            "username": username, "password_hash": password_hash, "mailbox": mailbox,
            "credentials": credentials,
            "smtp": {"host": self.host, "port": self.smtp_port, "tls": "starttls", "ca_file": ca},
            "pop3": {"host": self.host, "port": self.pop3_port, "tls": "implicit", "ca_file": ca},
            "imap": {"host": self.host, "port": self.imap_port, "tls": "implicit", "ca_file": ca},
        }

    def graph_account_yaml(self, username: str, password_hash: str | None, mailbox: str,
                           credentials: str = "sandbox", **graph: object) -> dict[str, object]:
        """An account that sends and reads through the fake Graph (``graph`` keys added); the
        mailbox is created there."""
        self.graph.mailboxes.add_mailbox(mailbox)
        return {
            "username": username, "password_hash": password_hash, "mailbox": mailbox,
            "credentials": credentials, "send_via": "graph", "read_via": "graph",
            "graph": {"url": self.graph.url, **graph},
        }

"""Building blocks shared by the relay test harnesses (SMTP, POP3, reliability, real servers).

A running relay for a test comes from tests/support/app_harness.py (a RelayApp started from a
relay.yaml); this module keeps the config parts, the seeded token sets and the raw line clients.
``LoopRelay``/``stop_on_loop`` remain for the few tests that need a listener built by hand and
hand-built sandbox-only tests.

Only what the suites do identically lives here: assembling a RelayConfig, the sandbox credentials
and upstream endpoints, an authorized token set as after `relay authorize`, stopping a relay that
runs on a LoopThread, the socket/line part of the raw clients and the one POP3 and one IMAP
transcript client (``Pop3Lines``, ``ImapLines``). Each suite keeps its own
accounts, limits, fixtures and protocol-level helpers.

Import as ``from support.relay_harness import ...`` (pytest has ``pythonpath = ["tests"]``;
child scripts put the tests folder on ``sys.path`` themselves).
"""

from __future__ import annotations

import socket
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    LimitsConfig,
    ListenConfig,
    ListenerConfig,
    RelayConfig,
    TokenStoreConfig,
    UpstreamEndpoint,
)
from relay.sandbox.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_SCOPE
from relay.secret import Secret
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

if TYPE_CHECKING:
    from relay.sandbox.loop import LoopThread
    from relay.sandbox.oauth import SandboxOAuthProvider
    from relay.sandbox.world import SandboxWorld
    from relay.tokens.manager import TokenManager

CREDENTIALS = "sandbox"
"""Name of the credentials entry every test config uses."""


def loopback(enabled: bool = True, port: int = 0) -> ListenerConfig:
    """A plain listener on 127.0.0.1 (port 0: any free port)."""
    return ListenerConfig(enabled, "127.0.0.1", port)


def sandbox_smtp_upstream(sandbox: SandboxWorld) -> UpstreamEndpoint:
    """The sandbox's SMTP submission server (STARTTLS, sandbox CA)."""
    return UpstreamEndpoint(sandbox.host, sandbox.smtp_port, "starttls", ca_file=sandbox.ca_file)


def sandbox_pop3_upstream(sandbox: SandboxWorld) -> UpstreamEndpoint:
    """The sandbox's POP3 server (implicit TLS, sandbox CA)."""
    return UpstreamEndpoint(sandbox.host, sandbox.pop3_port, "implicit", ca_file=sandbox.ca_file)


def sandbox_credentials(sandbox: SandboxWorld, *, with_secret: bool = False) -> CredentialsConfig:
    """The generic-provider credentials for the sandbox OAuth server (client secret if asked)."""
    return CredentialsConfig(name=CREDENTIALS, provider="generic", client_id=DEFAULT_CLIENT_ID,
                             client_secret=Secret(DEFAULT_CLIENT_SECRET) if with_secret else None,
                             scopes=tuple(DEFAULT_SCOPE.split()), token_url=sandbox.oauth.token_url,
                             authorize_url=sandbox.oauth.authorize_url)


def relay_config(*, accounts: Iterable[AccountConfig], credentials: CredentialsConfig,
                 token_store: TokenStoreConfig | Path, limits: LimitsConfig,
                 smtp_listener: ListenerConfig, pop3_listener: ListenerConfig) -> RelayConfig:
    """A RelayConfig from its parts (accounts keyed by name, one credentials entry)."""
    if isinstance(token_store, Path):
        token_store = TokenStoreConfig(path=token_store)
    return RelayConfig(
        listen=ListenConfig(smtp=smtp_listener, pop3=pop3_listener),
        token_store=token_store,
        credentials={credentials.name: credentials},
        accounts={account.name: account for account in accounts},
        limits=limits,
    )


def authorized_token_set(oauth: SandboxOAuthProvider, account: str, mailbox: str, *,
                         expires_in_s: float = 3600, obtained_ago_s: float = 3600,
                         access_lifetime_s: float | None = None) -> TokenSet:
    """A token set for ``account`` as `relay authorize` stores it: access and refresh token issued
    by ``oauth`` for ``mailbox``; stored expiry ``expires_in_s`` from now (negative: expired),
    obtained ``obtained_ago_s`` ago; ``access_lifetime_s`` is the provider-side lifetime."""
    now = datetime.now(UTC)
    return TokenSet(
        account=account, credentials=CREDENTIALS,
        access_token=Secret(oauth.issue_access_token(mailbox, access_lifetime_s)),
        expires_at=now + timedelta(seconds=expires_in_s),
        refresh_token=Secret(oauth.issue_refresh_token(mailbox)),
        scopes=tuple(DEFAULT_SCOPE.split()), obtained_at=now - timedelta(seconds=obtained_ago_s))


def fresh_store(path: Path) -> EncryptedFileStore:
    """An encrypted token store at ``path`` with a new random key."""
    return EncryptedFileStore(path, decode_key(generate_key(), "test"))


class _Stoppable(Protocol):
    def stop(self, grace_s: float) -> Coroutine[Any, Any, None]: ...


class _Closable(Protocol):
    def close(self) -> Coroutine[Any, Any, None]: ...


def stop_on_loop(thread: LoopThread, servers: Iterable[_Stoppable], tokens: _Closable,
                 grace_s: float) -> None:
    """Stop each server (sessions get ``grace_s``), close the token manager, stop the loop thread."""
    for server in servers:
        thread.run(server.stop(grace_s), timeout_s=grace_s + 20)
    thread.run(tokens.close())
    thread.stop()


ServerT = TypeVar("ServerT")


@dataclass
class LoopRelay(Generic[ServerT]):
    """One started relay server with its TokenManager, on its own loop thread."""

    config: RelayConfig
    sandbox: SandboxWorld
    server: ServerT
    tokens: TokenManager
    thread: LoopThread
    stopped: bool = field(default=False)

    @property
    def port(self) -> int:
        """The relay's bound port."""
        return int(self.server.port)  # type: ignore[attr-defined]

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server and the token manager, then the loop thread (once)."""
        if not self.stopped:
            self.stopped = True
            stop_on_loop(self.thread, [self.server], self.tokens, grace_s)  # type: ignore[list-item]


class LineClient:
    """A plain socket read line by line, for raw-protocol clients (exact bytes, bad input).

    A subclass that sets ``eof_on_reset`` treats a connection reset while reading as end of stream.
    """

    eof_on_reset = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        if not self.eof_on_reset:
            return self.sock.recv(65536)
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def line(self) -> bytes:
        """Read one line with its line end; on EOF whatever is left (b'' when nothing is)."""
        while b"\n" not in self.buffer:
            chunk = self._recv()
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class Pop3Lines(LineClient):
    """A raw POP3 transcript client: greeting read on connect, one command line out, its status
    line (or a multi-line body) in; for bad input and exact bytes."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.greeting = self.line()

    @classmethod
    def connect(cls, port: int, timeout_s: float = 30.0) -> Pop3Lines:
        """Connect to 127.0.0.1:``port`` and read the greeting."""
        return cls(socket.create_connection(("127.0.0.1", port), timeout=timeout_s))

    def cmd(self, line: bytes) -> bytes:
        """Send one command line (CRLF added), return the status line."""
        self.send(line + b"\r\n")
        return self.line()

    def until_terminator(self) -> bytes:
        """Read a multi-line body up to and including the terminating '.' line."""
        out = bytearray()
        while not out.endswith(b"\r\n.\r\n") and out != b".\r\n":
            line = self.line()
            if not line:
                raise ConnectionError("closed before the terminating line")
            out += line
        return bytes(out)

    def closed_by_server(self) -> bool:
        """True when the server closed the connection (EOF or reset) with nothing left unread."""
        try:
            return self.buffer == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


class ImapLines(LineClient):
    """A raw IMAP transcript client: greeting read on connect, then exact bytes in and lines out."""

    eof_on_reset = True

    def __init__(self, port: int, timeout_s: float = 30.0) -> None:
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=timeout_s))
        self.greeting = self.line()

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the one tagged ``tag``."""
        lines: list[bytes] = []
        while True:
            line = self.line()
            assert line, f"connection closed before {tag!r}; got {lines}"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def until_closed(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        data = self.buffer
        self.buffer = b""
        while chunk := self._recv():
            data += chunk
        return data

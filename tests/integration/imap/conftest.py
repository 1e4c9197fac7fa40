"""Fixtures for the IMAP proxy tests: one Dovecot IMAP and one relay per test module.

CI needs (Debian 12): ``dovecot-core dovecot-imapd dovecot-lmtpd`` and root (see
tests/integration/real/conftest.py); clients: fetchmail, getmail6, isync (mbsync), curl, neomutt.
Under CI=true a missing program fails the test instead of skipping it.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imap_world import ImapRelay, start_relay, start_world
from real_servers import DovecotServer

from relay.sandbox.oauth import SandboxOAuthProvider


@dataclass
class ImapWorld:
    """Dovecot IMAP, the OAuth provider that checks its tokens, and the relay in front."""

    base: Path
    oauth: SandboxOAuthProvider
    dovecot: DovecotServer
    relay: ImapRelay

    @property
    def cert(self) -> Path:
        """The certificate of Dovecot and of the relay's TLS listeners (its own CA)."""
        return self.dovecot.cert_file

    def diagnostics(self) -> str:
        """Dovecot's log tail for assertion messages."""
        return f"--- dovecot log ---\n{self.dovecot.log_text()[-3000:]}"


@pytest.fixture(scope="module")
def imap_world() -> Iterator[ImapWorld]:
    """Start the OAuth provider, Dovecot and the relay once per module; stop them after."""
    base, oauth, dovecot = start_world()
    relay = None
    try:
        relay = start_relay(base / "relay", oauth, dovecot)
        yield ImapWorld(base, oauth, dovecot, relay)
    finally:
        if relay is not None:
            relay.stop()
        dovecot.stop()
        oauth.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def account(imap_world: ImapWorld) -> int:
    """A fresh account number for this test (an empty mailbox of its own)."""
    return imap_world.relay.take_account()

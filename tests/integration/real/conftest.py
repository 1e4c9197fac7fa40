"""Session fixtures: a private Dovecot + Postfix on loopback, checked by the sandbox OAuth provider.

CI needs (Debian 12): ``apt-get install -y --no-install-recommends dovecot-core dovecot-pop3d
dovecot-lmtpd postfix swaks libnet-ssleay-perl msmtp fetchmail`` (preseed Postfix with
``postfix postfix/main_mailer_type select No configuration``), and root. The fixtures create the
``vmail`` system user if it is missing; nothing else on the machine is configured or touched.
Under CI=true a missing program fails the test instead of skipping it.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_servers import (
    DovecotServer,
    PostfixServer,
    make_base_dir,
    make_cert_dir,
    require_program,
    require_root,
)
from relay_stack import RelayStack, start_relay

from relay.sandbox.oauth import SandboxOAuthProvider

MAIL_DOMAIN = "example.com"


@dataclass
class RealWorld:
    """One OAuth provider, Dovecot (POP3, LMTP, auth) and Postfix (submission) for the session."""

    base: Path
    oauth: SandboxOAuthProvider
    dovecot: DovecotServer
    postfix: PostfixServer
    cert_file: Path

    def new_mailbox(self, prefix: str = "t") -> str:
        """Return a fresh mailbox address no other test uses (Postfix accepts ``t-*@example.com``)."""
        return f"{prefix}-{uuid.uuid4().hex[:12]}@{MAIL_DOMAIN}"

    def token(self, mailbox: str, lifetime_s: float | None = None) -> str:
        """Issue an access token for ``mailbox`` at the provider."""
        return self.oauth.issue_access_token(mailbox, lifetime_s)

    def diagnostics(self) -> str:
        """The tail of both servers' logs, for assertion messages."""
        return (f"--- postfix maillog ---\n{self.postfix.log_text()[-3000:]}\n"
                f"--- dovecot log ---\n{self.dovecot.log_text()[-3000:]}")


@pytest.fixture(scope="session")
def real_world() -> Iterator[RealWorld]:
    """Start the OAuth provider, Dovecot and Postfix once; stop them and remove their files after."""
    require_root()
    require_program("dovecot", "dovecot-core dovecot-pop3d dovecot-lmtpd")
    require_program("postfix", "postfix")
    base = make_base_dir("relay-real-")
    oauth = SandboxOAuthProvider().start()
    dovecot: DovecotServer | None = None
    postfix: PostfixServer | None = None
    try:
        cert, key = make_cert_dir(base)
        (base / "dovecot").mkdir(mode=0o755)
        dovecot = DovecotServer(base / "dovecot", oauth.introspection_url, cert, key, protocols=("pop3",))
        dovecot.start()
        postfix = PostfixServer(base / "postfix", dovecot, MAIL_DOMAIN)
        postfix.start()
        yield RealWorld(base=base, oauth=oauth, dovecot=dovecot, postfix=postfix, cert_file=cert)
    finally:
        if postfix is not None:
            postfix.stop()
        if dovecot is not None:
            dovecot.stop()
        oauth.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def relay_factory(real_world: RealWorld, tmp_path: Path) -> Iterator[Callable[..., RelayStack]]:
    """Start relays (one account each, fresh mailbox) against the real servers; stop them after."""
    stacks: list[RelayStack] = []

    def make(**kwargs: object) -> RelayStack:
        mailbox = str(kwargs.pop("mailbox", None) or real_world.new_mailbox())
        stack = start_relay(oauth=real_world.oauth, base=tmp_path / f"relay{len(stacks)}",
                            mailbox=mailbox, cert_file=real_world.cert_file,
                            key_file=real_world.dovecot.key_file,
                            postfix_port=real_world.postfix.smtp_port,
                            dovecot_pop3s_port=real_world.dovecot.pop3s_port, **kwargs)  # type: ignore[arg-type]
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def relay(relay_factory: Callable[..., RelayStack]) -> RelayStack:
    """One running relay for a fresh mailbox."""
    return relay_factory()

"""The real-client matrix's world: one sandbox and one relay for the whole module.

The relay listens three times on loopback: SMTP with STARTTLS offered (plaintext AUTH allowed,
as on loopback by default), SMTPS (implicit TLS) and POP3 with STLS, all with a self-signed
certificate the clients are told to trust. Each client sends a message with a unique subject and
the test finds it in the sandbox upstream. Under CI=true a missing client fails; locally it skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from support.app_harness import AppRelay, seed_accounts, start_app_relay, tokens_with, wait_until
from support.relay_harness import (
    authorized_token_set,
    relay_config,
    sandbox_credentials,
    sandbox_pop3_upstream,
    sandbox_smtp_upstream,
)

from relay.config.model import AccountConfig, LimitsConfig, ListenConfig, ListenerConfig
from relay.passwords import hash_password
from relay.sandbox.smtp_upstream import StoredMessage
from relay.sandbox.world import SandboxWorld
from relay.tlsutil import generate_self_signed
from relay.tokens.store import generate_key

CI = os.environ.get("CI", "").lower() == "true"
USERNAME = "matrix-app"
PASSWORD = "s3cret matrix"
MAILBOX = "matrix@sandbox.test"
SENDER = "app@x.test"
RCPT = "to@x.test"
POP3_MESSAGES = (b"Subject: pop one\r\nFrom: a@x.test\r\n\r\nfirst\r\n..dot line\r\n",
                 b"Subject: pop two\r\n\r\nsecond \xc3\xa9\r\n")


def need(*programs: str) -> None:
    """Skip (fail under CI=true) unless every program is on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        message = f"client program(s) not installed: {', '.join(missing)} (see .ci/run)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)


def run(args: list[str], *, stdin: bytes | None = None, timeout_s: float = 60,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a client; fail with its output when it exits non-zero."""
    result = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout_s, check=False,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    assert result.returncode == 0, (
        f"{args[0]} exited {result.returncode}\nstdout: {result.stdout[-2000:]!r}\n"
        f"stderr: {result.stderr[-2000:]!r}")
    return result


@dataclass
class MatrixWorld:
    """The sandbox, the relay's three ports, its certificate and a scratch directory."""

    sandbox: SandboxWorld
    smtp_port: int
    smtps_port: int
    pop3_port: int
    cert_file: Path
    work: Path

    def subject(self, client: str) -> str:
        """A subject no other test uses."""
        return f"matrix {client} {uuid.uuid4().hex[:10]}"

    def message(self, client: str) -> tuple[str, bytes]:
        """A unique CRLF message with a dot-line and 8-bit text, and its subject."""
        subject = self.subject(client)
        # Date and Message-ID present: clients that add missing ones (msmtp) send it unchanged.
        data = (f"Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@x.test>\r\n"
                f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n\r\n"
                "hello from the matrix\r\n.leading dot\r\nna\u00efve\r\n").encode()
        return subject, data

    def arrived(self, subject: str, timeout_s: float = 15) -> StoredMessage:
        """The one upstream message whose header block has this subject (waits for it)."""
        needle = f"Subject: {subject}\r\n".encode()

        def found() -> list[StoredMessage]:
            return [m for m in self.sandbox.smtp.messages()
                    if needle in m.data.split(b"\r\n\r\n")[0] + b"\r\n"]

        messages: list[StoredMessage] = wait_until(found, timeout_s,
                                                   f"a message with subject {subject!r} upstream")
        assert len(messages) == 1, "delivered more than once"
        return messages[0]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixWorld]:
    """Start the sandbox and the relay (SMTP+STARTTLS, SMTPS, POP3+STLS) once per module: two
    RelayApps from relay.yaml (one SMTP listener each) over copies of one authorized token store."""
    base = tmp_path_factory.mktemp("matrix")
    with SandboxWorld.start(base / "sandbox") as sandbox:
        cert, key = generate_self_signed(base / "relay-tls")
        account = AccountConfig(name="matrix", username=USERNAME,
                                password_hash=hash_password(PASSWORD, log2_n=10), mailbox=MAILBOX,
                                credentials="sandbox", smtp=sandbox_smtp_upstream(sandbox),
                                pop3=sandbox_pop3_upstream(sandbox))
        starttls = ListenerConfig(True, "127.0.0.1", 0, tls="starttls", cert_file=cert, key_file=key)
        config = relay_config(
            accounts=[account], credentials=sandbox_credentials(sandbox),
            token_store=base / "tokens.enc", smtp_listener=starttls, pop3_listener=starttls,
            limits=LimitsConfig(auth_failure_delay_s=0.05))
        smtps_config = replace(config, listen=ListenConfig(
            smtp=replace(starttls, tls="implicit"), pop3=replace(starttls, enabled=False)))
        for body in POP3_MESSAGES:
            sandbox.pop3.deliver(MAILBOX, body)
        relays: list[AppRelay] = []
        try:
            for name, listening in (("starttls", config), ("smtps", smtps_config)):
                directory = base / name
                directory.mkdir(mode=0o700)
                variant = replace(listening, token_store=replace(listening.token_store,
                                                                 path=directory / "tokens.enc"))
                key_text = generate_key()
                seed_accounts(variant, key_text,
                              {"matrix": authorized_token_set(sandbox.oauth, "matrix", MAILBOX)})
                relays.append(start_app_relay(variant, directory, key=key_text, name=f"matrix-{name}",
                                              tokens_factory=tokens_with(retry_attempts=1,
                                                                         retry_base_delay_s=0.01)))
            work = base / "work"
            work.mkdir()
            yield MatrixWorld(sandbox, relays[0].smtp_port, relays[1].smtp_port, relays[0].pop3_port,
                              cert, work)
        finally:
            for relay in relays:
                relay.stop(2.0)

"""A provider refusal is explained in the log (cause + fix from the table) once per account and cause."""

from __future__ import annotations

import logging
import smtplib

import pytest

from relay.explain import EXPLAINED_ONCE

from .conftest import MAILBOX, StartRelay

SEND_AS = "550 5.7.60 SMTP; Client does not have permissions to send as this sender [AM0PR01MB0001]"


def test_send_as_refusal_is_explained_once(start_relay: StartRelay, sandbox,  # type: ignore[no-untyped-def]
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Two refused messages: the client gets the upstream's 550 each time, the log explains it once."""
    EXPLAINED_ONCE.forget("sales")
    sandbox.smtp.mail_reply = SEND_AS
    relay = start_relay()
    caplog.set_level(logging.WARNING, logger="relay.explain")
    for _ in range(2):
        client = relay.smtp()
        try:
            with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused)) as info:
                client.sendmail("ceo@elsewhere.test", ["rcpt@example.test"], b"Subject: x\r\n\r\nbody\r\n")
            assert "5.7.60" in str(info.value)
        finally:
            client.quit()
    explained = [r.getMessage() for r in caplog.records if r.name == "relay.explain"]
    assert len(explained) == 1, explained
    assert "account sales" in explained[0] and "Add-RecipientPermission" in explained[0]
    assert f"-Trustee {MAILBOX}" in explained[0] and "accounts.sales.allowed_senders" in explained[0]

"""The bench upstream offers CHUNKING: a message sent with BDAT chunks is recorded with the same
envelope digest as the same message sent with DATA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.content import body, envelope_digest, stuff
from bench.upstream_proc import UpstreamProcess
from relay.config.model import UpstreamEndpoint
from relay.secret import Secret
from relay.smtp.bdat import BdatTransfer
from relay.smtp.upstream import UpstreamSmtpSession, mail_command, rcpt_command


@pytest.fixture
def bench_upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    up = UpstreamProcess(tmp_path)
    up.start()
    yield up
    up.stop()


async def _session(bench_upstream: UpstreamProcess) -> UpstreamSmtpSession:
    endpoint = UpstreamEndpoint("127.0.0.1", bench_upstream.ports["smtp"], "starttls",
                                ca_file=bench_upstream.cert)
    up = UpstreamSmtpSession(endpoint, account="bench", connect_timeout_s=10, command_timeout_s=10)
    await up.connect()
    await up.authenticate("bench@example.com", Secret(bench_upstream.issue_token()))
    return up


@pytest.mark.timeout(60)
async def test_bdat_and_data_store_the_same_digest(bench_upstream: UpstreamProcess) -> None:
    """One message with dot lines, once with DATA and once as BDAT chunks (several, by count)."""
    content = body(300_000)
    up = await _session(bench_upstream)
    assert up.pipelining and up.chunking
    assert (await up.mail("a@example.com")).code == 250
    assert (await up.rcpt("b@example.com")).code == 250
    assert (await up.send_data(content)).code == 250
    mail, rcpt = await up.mail_rcpt(mail_command("a@example.com"), rcpt_command("b@example.com"))
    assert (mail.code, rcpt.code if rcpt else None) == (250, 250)
    transfer = BdatTransfer(up, chunk_bytes=64 * 1024)
    wire = stuff(content)
    for i in range(0, len(wire), 10_000):
        if transfer.add(wire[i:i + 10_000]):
            assert await transfer.send_chunk() is None
    reply, sent = await transfer.finish()
    assert (reply.code, sent) == (250, True)
    await up.quit()
    expected = envelope_digest("a@example.com", ["b@example.com"], content)
    assert bench_upstream.delivered() == [expected, expected]

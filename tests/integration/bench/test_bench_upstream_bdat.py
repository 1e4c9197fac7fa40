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
from relay.smtp.bdat import last_chunk, unstuff
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
    data = unstuff(stuff(content))  # the relay's own unstuffing, as BDAT needs it
    chunks = [data[i:i + 64 * 1024] for i in range(0, len(data), 64 * 1024)]
    for chunk in chunks[:-1]:  # non-LAST chunks, by count (the relay itself sends one LAST only)
        await up.send_bytes(b"BDAT %d\r\n" % len(chunk) + chunk, "BDAT")
        assert (await up.read_reply("BDAT")).code == 250
    await up.send_bytes(last_chunk([chunks[-1]]), "BDAT")
    assert (await up.read_reply("BDAT LAST")).code == 250
    await up.quit()
    expected = envelope_digest("a@example.com", ["b@example.com"], content)
    assert bench_upstream.delivered() == [expected, expected]

"""UpstreamSmtpSession against the sandbox upstream: TLS, XOAUTH2 failure shapes, DATA stuffing,
pipelined MAIL+RCPT and BDAT."""

from __future__ import annotations

import pytest

from relay.config.model import UpstreamEndpoint
from relay.errors import ProtocolInputError, UpstreamAuthRejected, UpstreamUnavailable
from relay.sandbox.smtp_upstream import SandboxSmtpServer
from relay.secret import Secret
from relay.smtp.bdat import send_last_chunk, unstuff
from relay.smtp.upstream import UpstreamSmtpSession, mail_command, rcpt_command
from relay.tlsutil import generate_self_signed

MAILBOX = "user@sandbox.test"


def _session(endpoint: UpstreamEndpoint, **kw) -> UpstreamSmtpSession:
    return UpstreamSmtpSession(endpoint, account="t", connect_timeout_s=5, command_timeout_s=5, **kw)


def _endpoint(sandbox, **kw) -> UpstreamEndpoint:
    return UpstreamEndpoint(sandbox.host, sandbox.smtp_port, "starttls", ca_file=sandbox.ca_file, **kw)


async def test_send_data_dot_stuffs_and_keeps_bytes_exact(sandbox):
    """send_data stuffs leading dots and leaves line endings alone; the upstream stores the original."""
    up = _session(_endpoint(sandbox))
    await up.connect()
    assert up.capabilities.eight_bit_mime and "XOAUTH2" in up.capabilities.auth_mechanisms
    await up.authenticate(MAILBOX, Secret(sandbox.oauth.issue_access_token(MAILBOX)))
    content = b".\r\n..x\r\n.y\r\nend"
    assert (await up.mail("a@example.com")).code == 250
    assert (await up.rcpt("b@example.com")).code == 250
    reply = await up.send_data(content)
    await up.quit()
    assert reply.code == 250
    assert sandbox.smtp.wait_for_messages(1)[0].data == content + b"\r\n"


@pytest.mark.parametrize("style", ["google", "microsoft"])
async def test_rejected_token_raises_with_the_upstream_reply(sandbox, style):
    """Both failure shapes (334 JSON then 535, or 535 at once) give UpstreamAuthRejected + reply."""
    sandbox.smtp.auth_failure_style = style
    up = _session(_endpoint(sandbox))
    await up.connect()
    with pytest.raises(UpstreamAuthRejected) as info:
        await up.authenticate(MAILBOX, Secret("not-a-valid-token"))
    expected = ("535", "5.7.8") if style == "google" else ("535", "5.7.3")
    reply = info.value.reply
    assert reply is not None and (reply.code, reply.enhanced_code) == expected
    assert "not-a-valid-token" not in str(info.value)
    up.abort()


async def test_certificate_not_trusted_is_unavailable(sandbox):
    """Without the sandbox CA the certificate does not verify: UpstreamUnavailable, no AUTH sent."""
    up = _session(UpstreamEndpoint(sandbox.host, sandbox.smtp_port, "starttls"))
    with pytest.raises(UpstreamUnavailable, match="TLS"):
        await up.connect()
    assert not up.connected


async def test_host_name_mismatch_is_unavailable(tmp_path):
    """A trusted certificate for another host name fails verification (implicit TLS)."""
    cert, key = generate_self_signed(tmp_path / "other", hostnames=("other.test",))
    with SandboxSmtpServer(lambda token: None, cert, key, tls_mode="implicit") as server:
        up = _session(UpstreamEndpoint("127.0.0.1", server.port, "implicit", ca_file=cert))
        with pytest.raises(UpstreamUnavailable):
            await up.connect()


async def test_implicit_tls_upstream(tmp_path):
    """tls: implicit connects with TLS from the start and verifies the certificate."""
    cert, key = generate_self_signed(tmp_path / "implicit")
    with SandboxSmtpServer(lambda token: None, cert, key, tls_mode="implicit") as server:
        up = _session(UpstreamEndpoint("127.0.0.1", server.port, "implicit", ca_file=cert))
        reply = await up.connect()
        assert reply.code == 250 and "XOAUTH2" in up.capabilities.auth_mechanisms
        await up.quit()


async def test_connection_refused_is_unavailable(sandbox):
    """Nothing listening: UpstreamUnavailable."""
    up = _session(UpstreamEndpoint("127.0.0.1", 1, "starttls", ca_file=sandbox.ca_file))
    with pytest.raises(UpstreamUnavailable):
        await up.connect()


async def test_control_characters_in_an_address_never_reach_the_upstream(sandbox):
    """An address with CR/LF is refused before sending; the session stays usable."""
    up = _session(_endpoint(sandbox))
    await up.connect()
    await up.authenticate(MAILBOX, Secret(sandbox.oauth.issue_access_token(MAILBOX)))
    with pytest.raises(ProtocolInputError):
        await up.mail("a@example.com>\r\nRCPT TO:<evil@example.com")
    assert (await up.mail("a@example.com")).code == 250
    await up.quit()


async def _logged_in(sandbox, **kw) -> UpstreamSmtpSession:
    up = _session(_endpoint(sandbox, **kw))
    await up.connect()
    await up.authenticate(MAILBOX, Secret(sandbox.oauth.issue_access_token(MAILBOX)))
    return up


@pytest.mark.parametrize(("advertised", "setting", "expected"), [
    ((True, True), True, (True, True)), ((True, False), True, (True, False)),
    ((False, True), True, (False, False)), ((True, True), False, (False, False)),
])
async def test_pipelining_and_chunking_need_the_upstream_offer_and_the_setting(sandbox, advertised, setting,
                                                                                expected):
    """`pipelining` needs PIPELINING and the endpoint setting; `chunking` needs those and CHUNKING."""
    sandbox.smtp.advertise_pipelining, sandbox.smtp.advertise_chunking = advertised
    up = await _logged_in(sandbox, pipelining=setting)
    assert (up.pipelining, up.chunking) == expected
    await up.quit()


async def test_mail_rcpt_goes_in_one_write_and_a_refused_mail_leaves_the_session_usable(sandbox):
    """MAIL+RCPT pipelined: both replies; a refused MAIL gives its reply and the upstream's 503 to
    the RCPT, and the session still works."""
    up = await _logged_in(sandbox)
    mail, rcpt = await up.mail_rcpt(mail_command("a@example.com"), rcpt_command("b@example.com"))
    assert (mail.code, rcpt.code if rcpt else None) == (250, 250)
    assert (await up.rset()).code == 250
    sandbox.smtp.next_mail_replies = ["550 5.7.60 SendAsDenied"]
    mail, rcpt = await up.mail_rcpt(mail_command("x@example.com"), rcpt_command("b@example.com"))
    assert (mail.one_line(), rcpt.code if rcpt else None) == ("550 5.7.60 SendAsDenied", 503)
    assert (await up.noop()).code == 250
    await up.quit()
    [transcript] = sandbox.smtp.transcripts()
    assert len({turn for turn, verb in transcript.commands if verb in ("MAIL", "RCPT")}) == 2


async def test_mail_rcpt_after_421_returns_the_refusal_and_closes(sandbox):
    """A 421 to the pipelined MAIL (the upstream hangs up): the 421, no RCPT reply, session closed."""
    sandbox.smtp.next_mail_replies = ["421 4.3.2 going down"]
    up = await _logged_in(sandbox)
    mail, rcpt = await up.mail_rcpt(mail_command("a@example.com"), rcpt_command("b@example.com"))
    assert (mail.one_line(), rcpt) == ("421 4.3.2 going down", None)
    assert not up.connected


async def test_bdat_last_chunk_stores_the_unstuffed_content(sandbox):
    """Dot-stuffed wire content, unstuffed, as one BDAT LAST: stored byte-exact."""
    content = b"Subject: s\r\n\r\n" + b"".join(b".line %d\r\n" % i for i in range(300))
    wire = content.replace(b"\r\n.", b"\r\n..")
    up = await _logged_in(sandbox)
    await up.mail_rcpt(mail_command("a@example.com"), rcpt_command("b@example.com"))
    reply = await send_last_chunk(up, [unstuff(wire)])
    await up.quit()
    assert reply.code == 250
    assert sandbox.smtp.wait_for_messages(1)[0].data == content
    verbs = sandbox.smtp.transcripts()[0].verbs()
    assert verbs.count("BDAT LAST") == 1 and verbs.count("BDAT") == 0

"""relay.smtp.commandloop: the lean command loop answers every dialogue exactly as aiosmtpd's does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from relay.smtp import commandloop
from relay.smtp.commandloop import CommandLoop


class Handler:
    """Accepts everything; RCPT to boom@x.test raises (aiosmtpd's exception path)."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address == "boom@x.test":
            raise RuntimeError("boom")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 stored"


class Lean(CommandLoop):
    """aiosmtpd's SMTP with the relay's command loop and nothing else."""


LONG = b"NOOP " + b"x" * 3000  # past the stream's line limit (LimitOverrunError path)
DIALOGUE = [
    b"HELO client.test", b"", b"\xff\xfe junk", b"noop", b"NOOP \xc3\xa9", b"NOOP \xff",
    b"EHLO client.test", b"MAIL FROM:<" + b"a" * 600 + b"@x.test>", LONG, b"HELP", b"HELP MAIL",
    b"VRFY someone", b"MAIL FROM:<a@x.test> SIZE=10", b"RCPT TO:<boom@x.test>",
    b"RCPT TO:<b@x.test>", b"DATA", b"Subject: hi\r\n\r\nbody\r\n.", b"RSET",
    b"FOO", b"BAR", b"BAZ", b"QUUX", b"XYZZY",  # five unknown commands: 502 and closed
    b"NOOP",
]


async def _transcript(protocol: type[SMTP], lines: list[bytes], **kwargs: Any) -> list[str]:
    """Every reply the server sends to ``lines`` (one line at a time), then EOF marks."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol(Handler(), hostname="h.test", **kwargs),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies: list[str] = []

    async def reply() -> str:
        lines_in = []
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if not line:
                return " | ".join([*lines_in, "<closed>"])
            lines_in.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return " | ".join(lines_in)

    replies.append(await reply())
    for line in lines:
        writer.write(line + b"\r\n")
        answer = await reply()
        replies.append(answer)
        if answer.endswith("<closed>"):
            break
    writer.close()
    server.close()
    await server.wait_closed()
    return replies


@pytest.mark.parametrize("utf8", [True, False])
def test_same_replies_as_aiosmtpd(utf8: bool) -> None:
    """Good, bad, over-long, non-ASCII, unknown and failing commands: identical transcripts."""

    async def both() -> tuple[list[str], list[str]]:
        return (await _transcript(SMTP, DIALOGUE, enable_SMTPUTF8=utf8),
                await _transcript(Lean, DIALOGUE, enable_SMTPUTF8=utf8))

    theirs, ours = asyncio.run(both())
    assert ours == theirs
    assert ours[-1].endswith("<closed>") and any("(RuntimeError) boom" in r for r in ours)


def test_call_limit_and_starttls_requirement_as_aiosmtpd() -> None:
    """command_call_limit (421 and close) and require_starttls (530) answer as aiosmtpd does."""
    lines = [b"EHLO c.test", b"NOOP", b"MAIL FROM:<a@x.test>", b"NOOP", b"NOOP", b"NOOP"]

    async def both() -> list[tuple[list[str], list[str]]]:
        out = []
        for kwargs in ({"command_call_limit": 3}, {"require_starttls": True}):
            out.append((await _transcript(SMTP, lines, **kwargs),
                        await _transcript(Lean, lines, **kwargs)))
        return out

    for theirs, ours in asyncio.run(both()):
        assert ours == theirs


def test_the_installed_aiosmtpd_is_one_the_loop_was_checked_for() -> None:
    """The lean loop is in use (a new aiosmtpd needs re-checking and SUPPORTED extended)."""
    assert commandloop.ENABLED, "aiosmtpd changed: compare SMTP._handle_client with CommandLoop"

"""The upstream POP3 client against scripted loopback servers: XOAUTH2 reply shapes, TLS, failures."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.config.model import AccountConfig, LimitsConfig, UpstreamEndpoint
from relay.errors import UpstreamAuthRejected, UpstreamUnavailable
from relay.pop3.upstream import open_upstream
from relay.sasl import decode_xoauth2, encode_error_challenge
from relay.secret import Secret
from relay.tlsutil import generate_self_signed, server_context

LIMITS = LimitsConfig(upstream_connect_timeout_s=10, upstream_command_timeout_s=10,
                      upstream_data_timeout_s=10)


class CountingTokens:
    """A TokenSource whose first token is stale and whose forced refresh gives a fresh one."""

    def __init__(self) -> None:
        self.refreshes = 0

    async def get_token(self, account: str) -> Secret:
        return Secret("stale-token")

    async def force_refresh(self, account: str, rejected: Secret | None = None) -> Secret:
        self.refreshes += 1
        return Secret("fresh-token")


@dataclass
class Script:
    """How the scripted upstream behaves."""

    reject: Callable[[str], bytes | None] = lambda token: None  # token -> -ERR line, or None
    challenge: bool = False  # Dovecot/Gmail shape: `+ <b64 json>` before the -ERR
    stls: bool = False
    tls: ssl.SSLContext | None = None
    body: bytes = b"line 1\r\n..dot\r\n.\r\n"
    drop_in_body: bool = False
    seen_tokens: list[str] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)


async def _scripted(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await _scripted_session(script, reader, writer)
    except (asyncio.CancelledError, OSError):  # teardown, or a client that refused our TLS
        writer.transport.abort()


async def _scripted_session(script: Script, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    writer.write(b"+OK scripted ready\r\n")
    while line := await reader.readline():
        script.commands.append(line)
        word = line.split()[0].upper() if line.split() else b""
        if word == b"CAPA":
            in_tls = writer.get_extra_info("sslcontext") is not None
            extra = b"STLS\r\n" if script.stls and not in_tls else b""
            writer.write(b"+OK\r\nUIDL\r\nSASL XOAUTH2\r\n" + extra + b".\r\n")
        elif word == b"STLS" and script.tls is not None:
            writer.write(b"+OK go\r\n")
            await writer.drain()
            await writer.start_tls(script.tls)
        elif word == b"AUTH":
            writer.write(b"+ \r\n")
            creds = decode_xoauth2((await reader.readline()).strip())
            script.seen_tokens.append(creds.token)
            refusal = script.reject(creds.token)
            if refusal is None:
                writer.write(b"+OK User successfully authenticated.\r\n")
            else:
                if script.challenge:
                    writer.write(b"+ " + encode_error_challenge().encode() + b"\r\n")
                    await writer.drain()
                    assert await reader.readline() == b"\r\n"
                writer.write(refusal)
        elif word == b"RETR":
            writer.write(b"+OK\r\n" + (script.body[:5] if script.drop_in_body else script.body))
            if script.drop_in_body:
                await writer.drain()
                break
        else:
            writer.write(b"+OK\r\n")
        await writer.drain()
    writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], asyncio.Future[int]]]:
    """Start scripted upstreams on loopback port 0; yields a starter returning the port."""
    servers: list[asyncio.base_events.Server] = []

    async def start(script: Script) -> int:
        server = await asyncio.start_server(
            lambda r, w: _scripted(script, r, w), "127.0.0.1", 0,
            ssl=None if script.stls else script.tls)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def account(port: int, tls: str = "none", ca_file: Path | None = None) -> AccountConfig:
    endpoint = UpstreamEndpoint("localhost" if tls != "none" else "127.0.0.1", port,
                                tls, ca_file=ca_file)  # type: ignore[arg-type]
    return AccountConfig(name="sales", username="sales-app", password_hash=None,
                         mailbox="sales@example.com", credentials="c", smtp=None, pop3=endpoint)


async def test_challenge_shaped_rejection_forces_one_refresh_and_succeeds(scripted) -> None:
    """A Dovecot/Gmail-style `+ <json>` refusal triggers one forced refresh and a retry."""
    script = Script(reject=lambda t: b"-ERR [AUTH] Authentication failed.\r\n"
                    if t == "stale-token" else None, challenge=True)
    port = await scripted(script)
    tokens = CountingTokens()
    session, status = await open_upstream(account(port), tokens, LIMITS)
    await session.close()
    assert status.ok and status.text == "User successfully authenticated."
    assert script.seen_tokens == ["stale-token", "fresh-token"] and tokens.refreshes == 1
    assert session.capabilities == ("UIDL", "SASL XOAUTH2")


async def test_direct_err_rejection_after_refresh_raises_with_upstream_text(scripted) -> None:
    """A Microsoft-style direct -ERR, also after the refresh, surfaces the upstream's text."""
    script = Script(reject=lambda t: b"-ERR Authentication failure: unknown user name or bad password.\r\n")
    port = await scripted(script)
    tokens = CountingTokens()
    with pytest.raises(UpstreamAuthRejected) as info:
        await open_upstream(account(port), tokens, LIMITS)
    assert info.value.reply is not None
    assert info.value.reply.text == "Authentication failure: unknown user name or bad password."
    assert "forced token refresh" in str(info.value) and "sales@example.com" in str(info.value)
    assert tokens.refreshes == 1 and len(script.seen_tokens) == 2
    assert "stale-token" not in str(info.value)


async def test_in_use_refusal_is_not_retried_with_a_new_token(scripted) -> None:
    """[IN-USE] means the maildrop is locked, not a bad token: no refresh, code kept."""
    script = Script(reject=lambda t: b"-ERR [IN-USE] Mailbox locked by another session\r\n")
    port = await scripted(script)
    tokens = CountingTokens()
    with pytest.raises(UpstreamAuthRejected) as info:
        await open_upstream(account(port), tokens, LIMITS)
    assert info.value.reply is not None
    assert (info.value.reply.enhanced_code, info.value.reply.text) == (
        "IN-USE", "[IN-USE] Mailbox locked by another session")
    assert tokens.refreshes == 0


async def test_implicit_tls_and_stls_verify_the_certificate(scripted, tmp_path: Path) -> None:
    """TLS on connect and STLS both work with the right CA and are refused with a wrong name."""
    good_cert, good_key = generate_self_signed(tmp_path / "good", ("localhost",))
    bad_cert, bad_key = generate_self_signed(tmp_path / "bad", ("other.invalid",))
    for mode in ("implicit", "starttls"):
        ok_script = Script(tls=server_context(good_cert, good_key), stls=mode == "starttls")
        port = await scripted(ok_script)
        session, status = await open_upstream(account(port, mode, good_cert), CountingTokens(), LIMITS)
        assert status.ok and (b"STLS\r\n" in ok_script.commands) == (mode == "starttls")
        assert session.capabilities is not None and "STLS" not in session.capabilities
        await session.close()
        bad_script = Script(tls=server_context(bad_cert, bad_key), stls=mode == "starttls")
        port = await scripted(bad_script)
        with pytest.raises(UpstreamUnavailable, match=r"certificate|TLS"):
            await open_upstream(account(port, mode, bad_cert), CountingTokens(), LIMITS)
        assert bad_script.seen_tokens == []  # no token ever went to the unverified server


async def test_connection_refused_and_silent_server_are_unavailable() -> None:
    """A closed port and a server that never greets both raise UpstreamUnavailable."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(UpstreamUnavailable, match="connect"):
        await open_upstream(account(port), CountingTokens(), LIMITS)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    short = LimitsConfig(upstream_connect_timeout_s=5, upstream_command_timeout_s=0.5)
    with pytest.raises(UpstreamUnavailable, match="did not answer"):
        await open_upstream(account(server.sockets[0].getsockname()[1]), CountingTokens(), short)
    server.close()


async def test_body_stream_is_byte_exact_and_a_drop_raises(scripted) -> None:
    """stream_body yields the stuffed wire bytes up to '.'; a mid-body drop raises."""
    script = Script()
    session, _ = await open_upstream(account(await scripted(script)), CountingTokens(), LIMITS)
    assert (await session.command(b"RETR 1\r\n")).ok
    assert b"".join([part async for part in session.stream_body()]) == script.body
    assert (await session.command(b"NOOP\r\n")).ok  # still in step after the body
    await session.close()
    assert b"QUIT\r\n" not in script.commands

    dropping = Script(drop_in_body=True)
    session, _ = await open_upstream(account(await scripted(dropping)), CountingTokens(), LIMITS)
    await session.command(b"RETR 1\r\n")
    with pytest.raises(UpstreamUnavailable, match="closed the connection"):
        async for _part in session.stream_body():
            pass
    await session.close()

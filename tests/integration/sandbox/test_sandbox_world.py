"""SandboxWorld lifecycle, config helpers and the `python -m relay.sandbox` entry point."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time

import httpx

from relay.sandbox.world import SandboxWorld
from relay.sasl import encode_xoauth2


def test_world_starts_and_stops_cleanly() -> None:
    """A world starts and stops quickly, twice-stop is harmless, and no thread or port is left."""
    before = set(threading.enumerate())
    start = time.monotonic()
    world = SandboxWorld.start()
    ports = {world.smtp_port, world.pop3_port, world.oauth_port}
    assert len(ports) == 3 and 0 not in ports
    world.stop()
    world.stop()
    assert time.monotonic() - start < 5  # generous: the target is < 0.5 s on an idle machine
    assert set(threading.enumerate()) <= before
    assert not world.dir.exists()
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_yaml_helpers_point_at_the_sandbox(sandbox: SandboxWorld) -> None:
    """credentials_yaml/account_yaml give a generic provider and upstreams at this world with ca_file."""
    creds = sandbox.credentials_yaml("sbx")["sbx"]
    assert creds["provider"] == "generic" and creds["token_url"] == sandbox.oauth.token_url
    assert creds["device_authorization_url"] == sandbox.oauth.device_authorization_url
    account = sandbox.account_yaml("app", "scrypt$x", "alice@sandbox.test", credentials="sbx")
    assert account["smtp"] == {"host": "127.0.0.1", "port": sandbox.smtp_port, "tls": "starttls",
                               "ca_file": str(sandbox.ca_file)}
    assert account["pop3"]["port"] == sandbox.pop3_port and account["pop3"]["tls"] == "implicit"


def test_app_only_token_restricted_to_configured_mailboxes_at_smtp(sandbox: SandboxWorld) -> None:
    """The world's SMTP server honours the provider's app-only mailbox set."""
    sandbox.oauth.set_app_only_mailboxes({"sales@sandbox.test"})
    r = httpx.post(sandbox.oauth.token_url, data={"grant_type": "client_credentials"},
                   auth=("sandbox-client", "sandbox-secret"))
    token = r.json()["access_token"]
    ctx = ssl.create_default_context(cafile=str(sandbox.ca_file))
    for mailbox, expected in (("sales@sandbox.test", 235), ("ceo@sandbox.test", 334)):
        with smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=10) as client:
            client.starttls(context=ctx)
            client.ehlo()
            assert client.docmd("AUTH", "XOAUTH2 " + encode_xoauth2(mailbox, token))[0] == expected
            if expected == 334:
                assert client.docmd("")[0] == 535


async def test_usable_from_async_tests(sandbox: SandboxWorld) -> None:
    """An async test on its own loop talks to the world's servers (they run in another thread)."""
    reader, writer = await asyncio.open_connection(sandbox.host, sandbox.smtp_port)
    assert (await reader.readline()).startswith(b"220 ")
    writer.close()
    await writer.wait_closed()
    async with httpx.AsyncClient() as client:
        r = await client.post(sandbox.oauth.introspection_url, data={"token": "nope"})
    assert r.json() == {"active": False}


def test_module_entry_point_prints_json_and_stops_on_sigterm(tmp_path) -> None:
    """`python -m relay.sandbox` prints one JSON line with the URLs and exits 0 on SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "relay.sandbox", "--state-dir", str(tmp_path),
                             "--token-lifetime", "120"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["ca_file"] == str(tmp_path / "tls" / "cert.pem")
        r = httpx.post(info["token_url"], data={"grant_type": "client_credentials"},
                       auth=(info["client_id"], info["client_secret"]))
        assert r.json()["expires_in"] == 120
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

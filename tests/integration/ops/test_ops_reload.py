"""SIGHUP reload never leaves the relay without listeners (issue 22 item 3).

A new configuration that cannot start (port taken, a limit that breaks listen()), a loader that
hangs, or a `${file:}` on a FIFO: the old listeners keep accepting, the failure is logged loudly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import smtplib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import yaml
from ops_helpers import PASSWORD, OpsSetup, free_port
from support.serve import ServeProcess

from relay.app import RelayApp
from relay.config.model import RelayConfig
from relay.configuration import load_config

Serve = Callable[..., ServeProcess]


def _greeting(port: int, timeout_s: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        return sock.recv(512)


def _login(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("ops-app", PASSWORD)


def _edit(config: Path, **listen_smtp: object) -> None:
    data = yaml.safe_load(config.read_text())
    data["listen"]["smtp"].update(listen_smtp)
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def test_serve_keeps_its_listeners_when_the_new_port_is_taken(ops: OpsSetup, serve: Serve) -> None:
    """SIGHUP to a config whose SMTP port another process holds: the old port still accepts logins."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.seed("ops", "ops@sandbox.test")
    config = ops.write()
    proc = serve(config)
    proc.wait_listening()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        _edit(config, port=squatter.getsockname()[1])
        proc.signal(signal.SIGHUP)
        proc.wait_for("keeps running with the previous configuration")
    assert proc.proc.poll() is None
    _login(ops.smtp_port)
    assert "cannot start with the new configuration" in proc.output()
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def test_serve_reload_with_a_fifo_secret_neither_hangs_nor_drops_listeners(ops: OpsSetup, serve: Serve,
                                                                           tmp_path: Path) -> None:
    """A `${file:FIFO}` in the new config is refused at once; sessions never stall meanwhile."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.seed("ops", "ops@sandbox.test")
    config = ops.write()
    proc = serve(config)
    proc.wait_listening()
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    data = yaml.safe_load(config.read_text())
    data["credentials"]["sandbox"]["client_secret"] = f"${{file:{fifo}}}"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    proc.signal(signal.SIGHUP)
    proc.wait_for("keeping the running configuration", timeout_s=15)
    assert "not a regular file (a FIFO)" in proc.output()
    _login(ops.smtp_port)
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0


async def _running_app(ops: OpsSetup, loader: object, timeout_s: float = 30.0) -> RelayApp:
    await asyncio.to_thread(ops.seed, "ops", "ops@sandbox.test")  # seed runs its own event loop
    config = load_config(ops.write())
    app = RelayApp(config, loader=loader, reload_timeout_s=timeout_s)  # type: ignore[arg-type]
    await app.start()
    return app


async def test_reload_that_breaks_listen_restores_the_old_listeners(ops: OpsSetup, tmp_path: Path) -> None:
    """A config whose listener cannot start (its TLS key is unreadable at start) keeps the relay up."""

    def broken(path: Path) -> RelayConfig:
        good = load_config(path)
        smtp = dataclasses.replace(good.listen.smtp, tls="implicit", cert_file=tmp_path / "gone.pem",
                                   key_file=tmp_path / "gone.key")
        return dataclasses.replace(good, listen=dataclasses.replace(good.listen, smtp=smtp))

    app = await _running_app(ops, broken)
    try:
        port = app.smtp_port
        assert port is not None
        assert await app.reload() is False
        assert app.smtp_port is not None and app.pop3_port is not None
        greeting = await asyncio.to_thread(_greeting, app.smtp_port)
        assert greeting.startswith(b"220")
        assert not app._stop_requested.is_set()
        assert app.exit_code == 0
    finally:
        await app.stop(0)


async def test_reload_reads_the_file_off_the_loop_with_a_deadline(ops: OpsSetup) -> None:
    """A loader that hangs: the loop keeps serving (greetings arrive), reload gives up at its deadline."""
    release = threading.Event()

    def hanging(path: Path) -> RelayConfig:
        release.wait(30)
        return load_config(path)

    app = await _running_app(ops, hanging, timeout_s=1.0)
    try:
        port = app.smtp_port
        assert port is not None
        reload = asyncio.ensure_future(app.reload())
        greeting = await asyncio.to_thread(_greeting, port)  # served while the loader hangs
        assert greeting.startswith(b"220")
        assert not reload.done()
        assert await asyncio.wait_for(reload, 10) is False
        assert app.smtp_port == port
    finally:
        release.set()
        await app.stop(0)

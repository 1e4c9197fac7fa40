"""`relay serve` on each event loop: the start-up line names it; the connection limit answers on it."""

from __future__ import annotations

import socket

import pytest
import yaml
from ops_helpers import OpsSetup


def _first_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.makefile("rb").readline()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_runs_on_the_chosen_loop_and_refuses_past_max_connections(ops: OpsSetup, serve,
                                                                          loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    ops.seed("ops", "ops@sandbox.test")
    path = ops.write()
    data = yaml.safe_load(path.read_text())
    data["limits"]["max_connections"] = 2
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = serve(path, "--event-loop", loop)
    ports = proc.wait_listening()
    assert f"event loop: {loop}" in proc.output()
    held = [socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=10) for _ in range(2)]
    try:
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"220")
        assert _first_line(ports["smtp"]).startswith(b"421 4.7.0 Too many connections")
        pop3 = [socket.create_connection(("127.0.0.1", ports["pop3"]), timeout=10) for _ in range(2)]
        try:
            for sock in pop3:
                assert sock.makefile("rb").readline().startswith(b"+OK")
            assert _first_line(ports["pop3"]).startswith(b"-ERR [SYS/TEMP] Too many connections")
        finally:
            for sock in pop3:
                sock.close()
    finally:
        for sock in held:
            sock.close()

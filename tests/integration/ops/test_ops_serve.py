"""`relay serve` as a subprocess: graceful SIGTERM mid-DATA, SIGHUP reload, JSON logs without secrets."""

from __future__ import annotations

import base64
import contextlib
import signal
import smtplib
import socket

from ops_helpers import PASSWORD, OpsSetup, free_port


def _reply(sock: socket.socket) -> str:
    data = b""
    while True:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) >= 2 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data.decode()


def test_sigterm_during_data_lets_the_message_finish_then_exits_zero(ops: OpsSetup, serve) -> None:
    """SIGTERM mid-DATA: new connections are refused, the open transfer gets 250 and is delivered, exit 0."""
    ops.seed("ops", "ops@sandbox.test")
    proc = serve(ops.write())
    port = proc.wait_listening()["smtp"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        assert _reply(sock).startswith("220")
        sock.sendall(b"EHLO client.test\r\n")
        assert _reply(sock).startswith("250")
        auth = base64.b64encode(f"\0ops-app\0{PASSWORD}".encode()).decode()
        sock.sendall(f"AUTH PLAIN {auth}\r\n".encode())
        assert _reply(sock).startswith("235")
        sock.sendall(b"MAIL FROM:<ops@sandbox.test>\r\n")
        assert _reply(sock).startswith("250")
        sock.sendall(b"RCPT TO:<someone@example.org>\r\n")
        assert _reply(sock).startswith("250")
        sock.sendall(b"DATA\r\n")
        assert _reply(sock).startswith("354")
        sock.sendall(b"Subject: in flight during shutdown\r\n\r\nfirst half\r\n")
        proc.signal(signal.SIGTERM)
        proc.wait_for("stopping: no new connections")
        # The listener closed in the signal handler, before that line was logged: refused at once.
        refused = False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            refused = True
        assert refused, "a new connection was accepted after SIGTERM"
        assert proc.proc.poll() is None  # still finishing the open session
        sock.sendall(b"second half\r\n.\r\n")
        assert _reply(sock).startswith("250")
        sock.sendall(b"QUIT\r\n")
    finally:
        sock.close()
    assert proc.wait(60) == 0, proc.output()[-3000:]
    delivered = ops.world.smtp.wait_for_messages(1, timeout_s=10)
    assert len(delivered) == 1
    assert b"first half\r\nsecond half\r\n" in delivered[0].data


def test_json_logs_parse_and_contain_no_secret(ops: OpsSetup, serve) -> None:
    """--log-format json at DEBUG: every line is JSON, startup names listeners/accounts, no secret leaks."""
    ops.seed("ops", "ops@sandbox.test")
    ops.add_account("nobody", "nobody@sandbox.test")  # never authorized
    proc = serve(ops.write(), "--log-format", "json", "--log-level", "debug")
    port = proc.wait_listening()["smtp"]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("ops-app", PASSWORD)
        client.sendmail("ops@sandbox.test", ["a@example.org"], b"Subject: x\r\n\r\nbody\r\n")
        with contextlib.suppress(smtplib.SMTPException):
            client.login("ops-app", "wrong " + PASSWORD)
    ops.world.oauth.revoke_all_access_tokens()  # forces a refresh: new tokens pass through the logs
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("ops-app", PASSWORD)
        client.sendmail("ops@sandbox.test", ["b@example.org"], b"Subject: y\r\n\r\nbody\r\n")
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    records = proc.json_lines()
    messages = [r["message"] for r in records]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(m.startswith("account ops: login ops-app -> ops@sandbox.test") and "valid until" in m
               for m in messages)
    assert any(m.startswith("account nobody:") and "relay authorize nobody" in m for m in messages)
    output = proc.output()
    for secret in ops.secrets():
        assert secret not in output, "a secret value reached the log"


def test_sighup_reloads_a_valid_config_and_keeps_running_on_an_invalid_one(ops: OpsSetup, serve) -> None:
    """SIGHUP with a new account makes it usable on the same port; a broken file is logged and ignored."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    ops.seed("ops", "ops@sandbox.test")
    config = ops.write()
    proc = serve(config)
    proc.wait_listening()
    ops.add_account("second", "second@sandbox.test")
    ops.seed("second", "second@sandbox.test")
    ops.write()
    proc.signal(signal.SIGHUP)
    proc.wait_for("configuration reloaded")
    with smtplib.SMTP("127.0.0.1", ops.smtp_port, timeout=30) as client:
        client.login("second-app", PASSWORD)
        client.sendmail("second@sandbox.test", ["c@example.org"], b"Subject: z\r\n\r\nbody\r\n")
    assert ops.world.smtp.wait_for_messages(1, timeout_s=10)[0].user == "second@sandbox.test"
    config.write_text("listen: [this is not valid\n")
    proc.signal(signal.SIGHUP)
    proc.wait_for("keeping the running configuration")
    with smtplib.SMTP("127.0.0.1", ops.smtp_port, timeout=30) as client:
        client.login("ops-app", PASSWORD)
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0

"""Every command works without a terminal (cron, CI, containers): stdin closed, no controlling TTY.

Each command either does its job through its non-interactive option or exits non-zero with one
clear `relay: error:` line; never a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from ops_helpers import PASSWORD, OpsSetup, free_port, relay_cmd

from relay.cli import build_parser


def _close_stdin() -> None:
    os.close(0)


def _run(*args: str, stdin_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in a new session (no controlling terminal) with fd 0 closed, or fed ``stdin_text``."""
    if stdin_text is None:  # sh closes fd 0 and execs: no preexec_fn, so safe from several threads
        return subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *relay_cmd(*args)], capture_output=True,
                              text=True, timeout=60, check=False, start_new_session=True)
    return subprocess.run(relay_cmd(*args), capture_output=True, text=True, timeout=60, check=False,
                          start_new_session=True, input=stdin_text)


def _assert_clean(result: subprocess.CompletedProcess[str], rc: int, error: str | None = None) -> None:
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode == rc, out
    if error is not None:
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("relay: error: ") and error in last, result.stderr


def test_every_command_runs_without_a_terminal(ops: OpsSetup) -> None:
    """All subcommands with stdin closed: the result each should give, and no traceback anywhere."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    cfg = str(ops.write())
    ops.seed("ops", "ops@sandbox.test")
    covered: set[str] = set()

    def check(command: str, *args: str, rc: int, error: str | None = None) -> None:
        covered.add(command)
        _assert_clean(_run(command, *args), rc, error)

    # Independent commands (none changes what another reads): run side by side, checked in order.
    checks: list[tuple[tuple[str, ...], int, str | None]] = [
        (("check-config", "-c", cfg), 0, None),
        (("hash-password",), 2, "the password is empty"),
        (("init-key",), 0, None),
        (("tokens", "-c", cfg), 0, None),
        (("check", "-c", cfg, "ops"), 0, None),
        (("health", "-c", cfg, "--timeout", "1"), 1, None),  # nothing is serving yet
        (("status", "-c", cfg), 2, "admin: relay status reads the running relay's admin listener"),
        (("send-test", "ops", "--to", "x@sandbox.test", "-c", cfg), 2, "pass --password-stdin"),
        (("send-test", "ops", "--to", "x@sandbox.test", "-c", cfg, "--password-stdin"), 2,
         "standard input gave no password"),
        (("authorize", "ops", "--manual", "-c", cfg), 6, "nothing was pasted"),
        (("authorize", "ops", "--no-browser", "--timeout", "1", "-c", cfg), 7, "no sign-in completed"),
        (("demo", "--once", "--smtp-port", "0", "--pop3-port", "0"), 0, None),
        (("explain", "535 5.7.139 Authentication unsuccessful"), 0, None),
        (("explain",), 1, None),  # nothing on stdin: "unknown", exit 1
        (("queue", "list", "-c", cfg), 0, None),
        (("queue", "show", "no-such-id", "-c", cfg), 1, None),
        (("queue", "retry", "--all", "-c", cfg), 0, None),
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: _run(*c[0]), checks))
    for (args, rc, error), result in zip(checks, results, strict=True):
        covered.add(args[0])
        _assert_clean(result, rc, error)

    serving = subprocess.Popen(relay_cmd("serve", "-c", cfg), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=_close_stdin)  # noqa: PLW1509 - no threads in this child
    covered.add("serve")
    try:
        for line in serving.stdout:  # type: ignore[union-attr]
            if "relay running" in line:
                break
        ok = _run("send-test", "ops", "--to", "x@sandbox.test", "-c", cfg, "--password-stdin",
                  stdin_text=PASSWORD + "\n")
        _assert_clean(ok, 0)
        assert "Sent: the upstream accepted the message" in ok.stdout
        check("health", "-c", cfg, rc=0)
    finally:
        serving.send_signal(signal.SIGTERM)
        rest = serving.communicate(timeout=60)[0]
    assert serving.returncode == 0 and "Traceback" not in rest, rest
    check("revoke", "ops", "-c", cfg, rc=0)

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert covered == set(subparsers.choices), "a command is missing from this test"  # type: ignore[attr-defined]


@pytest.mark.parametrize("args", [["--help"], ["nonsense"], []])
def test_cli_usage_without_a_terminal(args: list[str]) -> None:
    """Help, an unknown command and no command at all: usage text and exit codes, no traceback."""
    result = _run(*args)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == (0 if args == ["--help"] else 2)
    assert "usage: relay" in result.stdout + result.stderr

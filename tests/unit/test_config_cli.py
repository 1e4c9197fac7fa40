"""Tests for `relay check-config` and `relay hash-password`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from relay.cli import main
from relay.passwords import verify_password


def test_hash_password_reads_stdin(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """hash-password reads one line from stdin and prints a hash that verifies."""
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["hash-password"]) == 0
    out = capsys.readouterr().out.strip()
    assert verify_password("s3cret", out) and "s3cret" not in out


@pytest.mark.parametrize("line", ["\n", "a\x00b\n"])
def test_hash_password_refuses_empty_and_control_chars(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Empty passwords and control characters are refused with a non-zero exit."""
    monkeypatch.setattr("sys.stdin", io.StringIO(line))
    assert main(["hash-password"]) != 0
    err = capsys.readouterr().err
    assert "nothing was hashed" in err or "control character" in err


def test_check_config_ok_and_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config prints OK for a valid file and every problem (exit 2) for a broken one."""
    data = {"token_store": {"key_env": "K"},
            "credentials": {"g": {"provider": "google", "client_id": "x"}},
            "accounts": {"a": {"username": "u", "mailbox": "a@example.com", "credentials": "g",
                               "allow_without_auth_from": ["127.0.0.1/32"]}}}
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    assert main(["check-config", "-c", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    data["accounts"]["a"]["credentials"] = "h"
    data["listen"] = {"smtp": {"prot": 1}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "listen.smtp.prot: unknown key 'prot'; did you mean 'port'?" in err
    assert "accounts.a.credentials: no credentials named 'h' (known: g)" in err

"""Tests for `relay check-config` and `relay hash-password`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.cli import main
from relay.passwords import hash_password, verify_password


def valid_config() -> dict[str, Any]:
    """A valid configuration with one trusted-network account."""
    return {"token_store": {"key_env": "K"},
            "credentials": {"g": {"provider": "google", "client_id": "x"}},
            "accounts": {"a": {"username": "u", "mailbox": "a@example.com", "credentials": "g",
                               "allow_without_auth_from": ["127.0.0.1/32"]}}}


def test_hash_password_reads_stdin(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """hash-password reads one line from stdin and prints only a hash that verifies."""
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["hash-password"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and verify_password("s3cret", out.strip()) and "s3cret" not in out


@pytest.mark.parametrize("line", ["\n", "", "a\x00b\n", "a\x01b"])
def test_hash_password_refuses_empty_and_control_chars(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Empty passwords and control characters are refused with exit 2 and nothing printed."""
    monkeypatch.setattr("sys.stdin", io.StringIO(line))
    assert main(["hash-password"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nothing was hashed" in captured.err or "control character" in captured.err


class FakeTty(io.StringIO):
    """A stdin that claims to be a terminal."""

    def isatty(self) -> bool:
        """Pretend to be a TTY."""
        return True


@pytest.mark.parametrize(("answers", "code"), [(["pw1", "pw1"], 0), (["pw1", "pw2"], 2)])
def test_hash_password_prompts_twice_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   answers: list[str], code: int) -> None:
    """On a TTY the password is asked twice without echo; different answers hash nothing."""
    prompts: list[str] = []
    replies = iter(answers)

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(replies)

    monkeypatch.setattr("sys.stdin", FakeTty())
    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert main(["hash-password"]) == code
    assert len(prompts) == 2
    out = capsys.readouterr().out.strip()
    assert verify_password("pw1", out) if code == 0 else out == ""


def test_check_config_ok_and_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config prints OK for a valid file and every problem, one per line (exit 2), for a broken one."""
    data = valid_config()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    assert main(["check-config", "-c", str(good)]) == 0
    assert capsys.readouterr().out == "OK: 1 account, 1 credential\n"
    data["accounts"]["a"]["credentials"] = "h"
    data["listen"] = {"smtp": {"prot": 1}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["check-config", "-c", str(bad)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["listen.smtp.prot: unknown key 'prot'; did you mean 'port'? (known: enabled, host, "
                     "port, tls, cert_file, key_file, allow_plaintext_auth_from, bare_lf, min_tls_version)",
                     "accounts.a.credentials: no credentials named 'h' (known: g)"]


def test_check_config_uses_relay_config_env_and_names_a_missing_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without -c, $RELAY_CONFIG is checked; a missing file is exit 2 with its path named."""
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(valid_config()))
    monkeypatch.setenv("RELAY_CONFIG", str(path))
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    monkeypatch.setenv("RELAY_CONFIG", str(tmp_path / "absent.yaml"))
    assert main(["check-config"]) == 2
    assert str(tmp_path / "absent.yaml") in capsys.readouterr().err


def test_check_config_warns_about_mixed_password_hash_costs(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22 item 13: hashes of different costs make usernames tell-able by timing: a warning
    names the accounts per cost (the file is still valid)."""

    data = valid_config()
    data["accounts"] = {name: {"username": name, "mailbox": f"{name}@example.com", "credentials": "g",
                               "password_hash": hash_password("pw", log2_n=ln)}
                        for name, ln in (("cheap", 4), ("dear", 6))}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", "-c", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: 2 accounts")
    assert "WARNING: accounts' password hashes use different costs (ln=4,r=8,p=1: cheap; " \
           "ln=6,r=8,p=1: dear)" in captured.err


def test_check_config_refuses_an_absurd_limit_with_its_path(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """max_connections: 10**23 passed check-config and then killed the listeners; now exit 2."""
    data = valid_config()
    data["limits"] = {"max_connections": 10**23}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", "-c", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "limits.max_connections: must be at most 1000000 (got 100000000000000000000000)"]

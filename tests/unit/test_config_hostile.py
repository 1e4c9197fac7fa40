"""Hostile configurations (issue 22 item 6): alias bombs, deep nesting, FIFOs and devices as files,
huge secrets, and values from ${ENV}/${file:} that must never be echoed in messages.

Cases that hung or exhausted memory before the fix run `relay check-config` in a child process
with a deadline, so a regression fails cleanly instead of hanging the suite.
"""

from __future__ import annotations

import copy
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.configuration import load_config, parse_config
from relay.errors import ConfigError
from relay.passwords import hash_password

HASH = hash_password("pw", log2_n=4)
DEADLINE_S = 20.0
CHILD_MEMORY_BYTES = 2 * 1024**3  # a regression that reads /dev/zero dies with MemoryError, not the host
VALID: dict[str, Any] = {
    "token_store": {"key_env": "K"},
    "credentials": {"g": {"provider": "google", "client_id": "x"}},
    "accounts": {"a": {"username": "u", "password_hash": HASH, "mailbox": "a@example.com",
                       "credentials": "g"}},
}


def valid() -> dict[str, Any]:
    """A fresh copy of a small valid configuration."""
    return copy.deepcopy(VALID)


def check_config(path: Path, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run `relay check-config -c PATH` in a child; (exit code, stderr, seconds)."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "-c", str(path)],
        capture_output=True, text=True, timeout=DEADLINE_S, check=False,
        env={**os.environ, **(env or {})}, preexec_fn=limit_memory)
    return result.returncode, result.stderr, time.monotonic() - started


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """YAML of `width`**`levels` strings written in a few hundred bytes (the "billion laughs")."""
    lines = ["x0: &x0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines)


def write(tmp_path: Path, data: dict[str, Any], extra: str = "", name: str = "relay.yaml") -> Path:
    path = tmp_path / name
    path.write_text(extra + "\n" + yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("where", ["max_connections", "boolean", "key"])
def test_alias_bomb_is_reported_in_a_short_message(tmp_path: Path, where: str) -> None:
    """An alias bomb where a number, a boolean or a key is expected: exit 2 at once, a short message."""
    data = valid()
    body = yaml.safe_dump(data)
    if where == "max_connections":
        body += "limits:\n  max_connections: *x8\n"
    elif where == "boolean":
        body += "upstream_pool:\n  enabled: *x8\n"
    else:
        body += "listen:\n  *x8 : 1\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb().replace("x0:", "x0:", 1) + "\n" + body)
    code, stderr, took = check_config(path)
    assert code == 2, stderr[-2000:]
    assert len(stderr) < 5000 and "MemoryError" not in stderr and "Traceback" not in stderr
    assert took < 10


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    """10,000 nested lists: a config error naming the problem, not a RecursionError traceback."""
    path = tmp_path / "deep.yaml"
    path.write_text("accounts: " + "[" * 10_000 + "]" * 10_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


def test_deep_nesting_in_memory_data_is_a_config_error() -> None:
    """Deeply nested data handed to parse_config (not from a file) is refused the same way."""
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    data = valid()
    data["accounts"]["a"] = {**data["accounts"]["a"], "allow_without_auth_from": deep, "mailbox": deep}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert len(str(info.value)) < 2000


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_config_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """`-c FIFO` answers "not a regular file" instead of waiting forever for a writer."""
    fifo = tmp_path / "relay.yaml"
    os.mkfifo(fifo)
    code, stderr, _ = check_config(fifo)
    assert code == 2 and "not a regular file (a FIFO)" in stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_secret_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """`${file:FIFO}` is a problem at its YAML path, found at once."""
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    data = valid()
    data["credentials"] = {"g": {"provider": "google", "client_id": "x",
                                 "client_secret": f"${{file:{fifo}}}"}}
    code, stderr, _ = check_config(write(tmp_path, data))
    assert code == 2
    assert f"credentials.g.client_secret: cannot read ${{file:{fifo}}}: not a regular file (a FIFO)" in stderr


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_as_config_or_secret_is_refused(tmp_path: Path) -> None:
    """/dev/zero as the config or a ${file:} secret: refused as a device, memory untouched."""
    code, stderr, _ = check_config(Path("/dev/zero"))
    assert code == 2 and "cannot read configuration file /dev/zero: not a regular file (a character device)" \
        in stderr
    data = valid()
    data["accounts"]["a"] = {**data["accounts"]["a"], "password_hash": "${file:/dev/zero}"}
    code, stderr, _ = check_config(write(tmp_path, data))
    assert code == 2
    assert "accounts.a.password_hash: cannot read ${file:/dev/zero}: not a regular file" in stderr


def test_oversized_config_and_secret_files_are_refused(tmp_path: Path) -> None:
    """A config over 1 MiB and a secret file over 64 KiB are refused with their sizes."""
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match=r"too large \(\d+ bytes, at most 1048576\)"):
        load_config(big)
    secret = tmp_path / "secret"
    secret.write_text("s" * (64 * 1024 + 1))
    data = valid()
    data["credentials"] = {"g": {"provider": "google", "client_id": "x",
                                 "client_secret": f"${{file:{secret}}}"}}
    with pytest.raises(ConfigError, match=r"credentials.g.client_secret: cannot read .* too large"):
        load_config(write(tmp_path, data))


def test_huge_environment_value_is_refused_without_echo() -> None:
    """A 100 KB value from ${ENV} is refused as too long, naming the reference, not the value."""
    data = valid()
    data["credentials"] = {"g": {"provider": "google", "client_id": "${BIG}"}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"BIG": "Q" * 100_000})
    assert info.value.problems == [("credentials.g.client_id", "is too long (the value of ${BIG}: "
                                    "100000 characters, at most 65536)")]


@pytest.mark.parametrize(("key", "value", "expected"), [
    (("listen", "smtp", "port"), "${file:SECRET}",
     "must be a whole number (got the value of ${file:SECRET})"),
    (("limits", "max_connections"), "${TOKEN}", "must be a whole number (got the value of ${TOKEN})"),
    (("upstream_pool", "enabled"), "${TOKEN}", "must be true or false (got the value of ${TOKEN})"),
    (("listen", "smtp", "tls"), "x-${TOKEN}",
     "the value of 'x-${TOKEN}' is not one of none, starttls, implicit"),
    (("accounts", "a", "mailbox"), "${TOKEN}", "the value of ${TOKEN} is not an email address"),
    (("accounts", "a", "allow_without_auth_from"), ["${TOKEN}"],
     "the value of ${TOKEN} is not an IP network (e.g. 172.16.0.0/12)"),
])
def test_values_from_references_are_never_echoed(tmp_path: Path, key: tuple[str, ...], value: object,
                                                 expected: str) -> None:
    """A wrong value that came from ${file:}/${ENV} is shown as its reference, never as the value."""
    (tmp_path / "SECRET").write_text("TOP-SECRET-FROM-FILE\n")
    data = valid()
    node = data
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"K": "k", "TOKEN": "TOP-SECRET-FROM-ENV"})
    text = str(info.value)
    assert "TOP-SECRET" not in text
    assert any(message == expected for _, message in info.value.problems), text


def test_repeated_references_cannot_multiply_a_value() -> None:
    """A 60 KB variable referenced 10,000 times in one value stops expanding past the cap."""
    data = valid()
    data["credentials"] = {"g": {"provider": "google", "client_id": "${BIG}" * 10_000}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"BIG": "Q" * 60_000})
    [(path, message)] = info.value.problems
    assert path == "credentials.g.client_id" and message.startswith("expands to more than 262144 characters")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_files_named_by_settings_must_be_regular_files(tmp_path: Path) -> None:
    """A FIFO as ca_file or a directory as service_account_file is named as not a regular file."""
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    data = valid()
    data["credentials"] = {"g": {"provider": "google", "client_id": "x",
                                 "service_account_file": str(tmp_path)}}
    data["accounts"] = {"a": {**VALID["accounts"]["a"], "smtp": {"ca_file": str(fifo)}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert info.value.problems == [
        ("credentials.g.service_account_file", f"{tmp_path} is not a regular file"),
        ("accounts.a.smtp.ca_file", f"{fifo} is not a regular file")]

"""The token commands run as a real `relay` process."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys


def relay(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m relay ARGS` and capture its output."""
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_init_key_creates_private_key_file_and_refuses_overwrite(tmp_path):
    """`relay init-key --key-file` writes a 0600 32-byte key and exits non-zero rather than overwrite it."""
    key_file = tmp_path / "k" / "store.key"
    first = relay("init-key", "--key-file", str(key_file))
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.urlsafe_b64decode(key_file.read_text().strip())) == 32
    second = relay("init-key", "--key-file", str(key_file))
    assert second.returncode == 3 and "already exists" in second.stderr


def test_init_key_prints_a_key_for_the_environment():
    """`relay init-key` without a file prints a key (stdout) and how to use it (stderr)."""
    done = relay("init-key")
    assert done.returncode == 0
    assert len(base64.urlsafe_b64decode(done.stdout.strip())) == 32
    assert "RELAY_STORE_KEY" in done.stderr

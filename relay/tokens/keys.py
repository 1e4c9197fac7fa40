"""The token store's encryption key (env var or key file), and safe reading of private files.

Files are opened non-blocking and checked with ``fstat`` before any read, so a FIFO, a device or a
directory at a configured path is refused with an error naming the setting instead of hanging the
relay (``relay serve`` and every command).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from relay.config.model import TokenStoreConfig
from relay.errors import TokenStoreError

KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096


def generate_key() -> str:
    """Return a new random 256-bit key as URL-safe base64 text (for key_file or the env var)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def decode_key(text: str, source: str) -> bytes:
    """Decode a base64 (standard or URL-safe) 32-byte key; TokenStoreError naming ``source``."""
    cleaned = text.strip()
    try:
        urlsafe = cleaned.replace("+", "-").replace("/", "_")
        raw = base64.urlsafe_b64decode(urlsafe + "=" * (-len(urlsafe) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise TokenStoreError(f"the token store key in {source} is not 32 bytes of base64; create one with "
                              "`relay init-key`")
    return raw


def check_private(path: Path, what: str, mode: int | None = None) -> None:
    """Refuse a file that group or others may access (like ssh does for private keys)."""
    mode = stat.S_IMODE(path.stat().st_mode if mode is None else mode)
    if mode & 0o077:
        raise TokenStoreError(f"{what} {path} is accessible by group/others (mode {mode:04o}); "
                              f"run `chmod 600 {path}`")


def read_private_file(path: Path, *, what: str, setting: str, max_bytes: int) -> bytes:
    """Read a private regular file without ever blocking on a FIFO or device.

    Raises FileNotFoundError when it does not exist (callers word that case), TokenStoreError
    naming ``setting`` when it is not a regular file, too large, open to others or unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TokenStoreError(f"{setting}: cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenStoreError(f"{setting}: {what} {path} is not a regular file ({_kind(st.st_mode)}); "
                                  "point the setting at a file")
        check_private(path, what, st.st_mode)
        if st.st_size > max_bytes:
            raise TokenStoreError(f"{setting}: {what} {path} is too large ({st.st_size} bytes, at most "
                                  f"{max_bytes}); check the setting")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise TokenStoreError(f"{setting}: {what} {path} is too large (more than {max_bytes} bytes)")
        return b"".join(chunks)
    except OSError as exc:
        raise TokenStoreError(f"{setting}: cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def load_key(config: TokenStoreConfig, env: Mapping[str, str] | None = None) -> bytes:
    """Read the key from the env var ``key_env`` if set there, else from ``key_file``."""
    env = os.environ if env is None else env
    if config.key_env and env.get(config.key_env):
        return decode_key(env[config.key_env], f"environment variable {config.key_env}")
    if config.key_file is not None:
        path = Path(config.key_file)
        try:
            raw = read_private_file(path, what="the token store key file", setting="token_store.key_file",
                                    max_bytes=MAX_KEY_FILE_BYTES)
            text = raw.decode("ascii")
        except FileNotFoundError:
            raise TokenStoreError(f"the token store key file {path} does not exist; create it with "
                                  f"`relay init-key --key-file {path}`") from None
        except UnicodeDecodeError:
            raise TokenStoreError(f"the token store key file {path} is not base64 text; create one with "
                                  "`relay init-key`") from None
        return decode_key(text, f"key file {path}")
    where = f"set the environment variable {config.key_env}" if config.key_env else "set token_store.key_env"
    raise TokenStoreError(f"no token store key: {where} or token_store.key_file; create a key with "
                          "`relay init-key`")


def write_key_file(path: Path) -> None:
    """Create ``path`` (mode 0600, never overwriting) holding a new key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TokenStoreError(f"{path} already exists; refusing to overwrite a key (tokens encrypted "
                              "with it would be lost)") from None
    except OSError as exc:
        raise TokenStoreError(f"cannot create the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(generate_key() + "\n")
        f.flush()
        os.fsync(f.fileno())

"""Reading the configuration file and ``${file:}`` secrets safely, and parsing YAML.

Only regular files are read: a FIFO, a terminal or ``/dev/zero`` given as ``-c`` or in
``${file:}`` would otherwise hang the reader or exhaust memory. The file is opened non-blocking
and checked with ``fstat`` on the open descriptor (no race with a rename), and sizes are capped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024  # a relay.yaml with hundreds of accounts is ~100 KB
MAX_SECRET_FILE_BYTES = 64 * 1024  # a client secret or password hash: well under 1 KB


class SourceError(ValueError):
    """A file cannot be used as configuration input; the message says why (never its content)."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """Return the bytes of the regular file ``path``, refusing other kinds and files over ``limit``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SourceError(exc.strerror or type(exc).__name__) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise SourceError(f"too large ({info.st_size} bytes, at most {limit})")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # grew after fstat
                raise SourceError(f"too large (more than {limit} bytes)")
        return b"".join(chunks)
    except OSError as exc:
        raise SourceError(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys (the second would silently win otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            name = self.construct_object(key_node, deep=True)
            try:
                duplicate = name in seen
                seen.add(name)
            except TypeError:  # unhashable key: SafeLoader reports it below
                continue
            if duplicate:
                shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:60] + "...'"
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {shown} (remove one of them)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> object:
    """Parse YAML text; raise ValueError with line and column (RecursionError: too deeply nested)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ValueError(f"invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ValueError("invalid YAML: nested too deeply (keep the structure to a few levels)") from None

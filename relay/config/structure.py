"""Phase 1 of loading: the YAML document's structure into the frozen model, every problem collected.

This phase knows only the shapes and types declared in `relay.config.model` (``key(...)``):
unknown keys (with the closest known key suggested), wrong types, ranges, ``${ENV}`` /
``${file:}`` expansion. It reads no file named by a setting except ``${file:}`` secrets, and
imports no other relay package; phase 2 (`relay.configuration`) checks meaning: files, TLS rules,
providers, uniqueness, cross references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relay.config.model import RelayConfig
from relay.config.schema import Reader
from relay.config.sources import MAX_CONFIG_BYTES, SourceError, parse_yaml, read_regular_file
from relay.errors import ConfigError

MAX_PROBLEMS = 100  # more would bury the first ones; they are fixed in a few rounds


@dataclass(frozen=True)
class Structure:
    """The result of phase 1: the model (None when the document is no mapping) and its problems."""

    config: RelayConfig | None
    reader: Reader

    def error(self, problems: list[tuple[str, str]]) -> ConfigError:
        """One ConfigError with ``problems`` in document order (first MAX_PROBLEMS of them)."""
        ordered = sorted(problems, key=lambda item: self._position(item[0]))
        if len(ordered) > MAX_PROBLEMS:
            extra = len(ordered) - MAX_PROBLEMS
            ordered = [*ordered[:MAX_PROBLEMS], ("", f"... and {extra} more problem(s)")]
        first_path, first_message = ordered[0]
        return ConfigError(first_path, first_message, problems=ordered)

    def _position(self, path: str) -> int:
        order = self.reader.order
        while path:
            if path in order:
                return order[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return order.get("", len(order))


def read_document(path: Path) -> object:
    """The parsed YAML of the configuration file; ConfigError naming the file and the fix."""
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES)
    except SourceError as exc:
        if not path.exists() and not path.is_symlink():
            raise ConfigError("", f"configuration file {path} does not exist; pass --config FILE "
                              "(start from relay.example.yaml)") from None
        raise ConfigError("", f"cannot read configuration file {path}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", f"cannot read configuration file {path}: not UTF-8 text") from None
    try:
        return parse_yaml(text)
    except ValueError as exc:
        raise ConfigError("", f"{path}: {exc}") from None


def read_structure(data: object, env: Mapping[str, str], base_dir: Path) -> Structure:
    """Phase 1: build the model from parsed YAML ``data``, collecting problems on the reader."""
    reader = Reader(env, base_dir)
    reader.seen("")
    try:
        values = reader.section_values(RelayConfig, data, "")
    except RecursionError:  # a self-referencing structure handed over by a caller
        reader.problem("", "the configuration is nested too deeply")
        values = None
    config = RelayConfig(**values) if values is not None else None
    return Structure(config, reader)

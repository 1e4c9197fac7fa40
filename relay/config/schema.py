"""How a YAML key is declared on the model, and the reader that collects problems with their paths.

A dataclass field is a YAML key only when it is declared with :func:`key`; the parser given there
turns the written value into the field's value (``key(whole(1, 65535), default=25)``). Fields
declared with a plain ``field()`` (``name``, ``source_path``, resolved values) are not keys, so
the accepted YAML never depends on the order of fields. Parsers live in
`relay.config.parsers`; this module holds only what they share.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.config.expand import ExpansionError, expand_value

KEY = "relay.config.key"
MAX_TEXT_CHARS = 64 * 1024  # a string value, also after ${ENV}/${file:} expansion
_SHOWN_CHARS = 60


class Invalid(ValueError):
    """A value is wrong; the message says why and how to fix it (the path is added by the reader)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


Parser = Callable[["Reader", object, str], Any]
"""``parse(reader, value, path) -> field value``; raises Invalid, or records nested problems."""


@dataclass(frozen=True)
class Key:
    """The declaration of one YAML key: how to parse it and what happens when it is absent."""

    parse: Parser
    required: bool = False  # absent or null: "is required" (the placeholder stands in)
    placeholder: object = ""  # value used for a missing required key, so checking can go on
    null_is_value: bool = False  # `key: null` is parsed (not "use the default")
    only_under: str | None = None  # key exists only in the section at this YAML key (``smtp``)
    name: str | None = None  # the YAML key when it differs from the field name


def key(parse: Parser, default: Any = dataclasses.MISSING, *, required: bool = False,
        placeholder: object = "", null_is_value: bool = False, only_under: str | None = None,
        name: str | None = None, default_factory: Any = dataclasses.MISSING, **field_options: Any) -> Any:
    """Declare a dataclass field as a YAML key parsed by ``parse`` (see `Key` for the options)."""
    spec = Key(parse, required, placeholder, null_is_value, only_under, name)
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata={KEY: spec}, **field_options)
    return field(default=default, metadata={KEY: spec}, **field_options)


def yaml_keys(cls: type, under: str | None = None) -> dict[str, tuple[dataclasses.Field[Any], Key]]:
    """The YAML keys of a model class, in declaration order (``under``: the parent YAML key)."""
    keys: dict[str, tuple[dataclasses.Field[Any], Key]] = {}
    for item in dataclasses.fields(cls):
        spec = item.metadata.get(KEY)
        if isinstance(spec, Key) and (spec.only_under is None or spec.only_under == under):
            keys[spec.name or item.name] = (item, spec)
    return keys


@dataclass(frozen=True)
class Text:
    """A string value after expansion, and how to show it in a message without leaking it."""

    value: str
    shown: str  # 'written text', or "the value of ${file:/run/x}" when it came from a reference


def describe(value: object) -> str:
    """A short, safe description of a written value for messages (never a whole structure)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple | set):
        return "a list"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...'"


def join(path: str, name: str) -> str:
    """``accounts`` + ``sales`` -> ``accounts.sales``."""
    return f"{path}.{name}" if path else name


@dataclass
class Reader:
    """Per-load state: where references resolve, the problems found, the order paths were seen."""

    env: Mapping[str, str]
    base_dir: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)

    def problem(self, path: str, message: str) -> None:
        """Record a problem at ``path``."""
        self.seen(path)
        self.problems.append((path, message))

    def seen(self, path: str) -> None:
        """Remember that ``path`` was reached (problems are reported in this order)."""
        self.order.setdefault(path, len(self.order))

    def text(self, value: object, *, secret: bool = False) -> Text:
        """A scalar as expanded text; raises Invalid (control characters only allowed in secrets)."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise Invalid(f"must be a string (got {describe(value)})")
        written = str(value)
        try:
            expanded = expand_value(written, self.env, self.base_dir)
        except ExpansionError as exc:
            raise Invalid(str(exc)) from None
        shown = describe(written) if expanded == written or "${" not in written else \
            f"the value of {written if _one_reference(written) else describe(written)}"
        if len(expanded) > MAX_TEXT_CHARS:
            raise Invalid(f"is too long ({shown}: {len(expanded)} characters, at most {MAX_TEXT_CHARS})")
        if not secret and any(ch in "\r\n\x00\x01" for ch in expanded):
            raise Invalid("must not contain control characters (CR, LF, NUL, ^A)")
        return Text(expanded, shown)

    def mapping(self, value: object, path: str, known: tuple[str, ...]) -> dict[str, Any] | None:
        """``value`` as a mapping with only ``known`` keys (null is empty); None when not a mapping."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping with keys {', '.join(known)} (got {describe(value)})")
            return None
        for name in value:
            if not isinstance(name, str) or name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.problem(join(path, str(name)), f"unknown key {describe(str(name))}{hint} "
                             f"(known: {', '.join(known)})")
        return {k: v for k, v in value.items() if isinstance(k, str) and k in known}

    def section_values(self, cls: type, value: object, path: str, *, under: str | None = None,
                       enforce_required: bool = True,
                       defaults: Collection[str] = ()) -> dict[str, Any] | None:
        """Parse the keys of ``cls`` present in the mapping ``value``; None if it is no mapping.

        An absent key keeps the class's default (or the section's: ``defaults``); a key with
        neither is parsed from None (its parser knows the default, e.g. a path next to the YAML).
        """
        keys = yaml_keys(cls, under)
        data = self.mapping(value, path, tuple(keys))
        if data is None:
            return None
        values: dict[str, Any] = {}
        for name, (item, spec) in keys.items():
            sub = join(path, name)
            self.seen(sub)
            has_default = not (item.default is dataclasses.MISSING
                               and item.default_factory is dataclasses.MISSING and item.name not in defaults)
            written = data.get(name)
            if written is None and not (spec.null_is_value and name in data):
                if spec.required and enforce_required:
                    self.problem(sub, "is required")
                    values[item.name] = spec.placeholder
                elif not has_default and enforce_required:
                    values[item.name] = self.parse(spec, None, sub, True)  # the parser knows the default
                continue
            values[item.name] = self.parse(spec, written, sub, not has_default and enforce_required)
        return {k: v for k, v in values.items() if v is not _FAILED}

    def parse(self, spec: Key, value: object, path: str, needs_value: bool = False) -> Any:
        """Run one key's parser; on a problem (recorded) the field keeps its default, or gets the
        placeholder when it has none, so the rest of the configuration can still be checked."""
        try:
            return spec.parse(self, value, path)
        except Invalid as exc:
            self.problem(path, exc.message)
            return spec.placeholder if spec.required or needs_value else _FAILED


_FAILED = object()


def _one_reference(text: str) -> bool:
    return text.startswith("${") and text.endswith("}") and text.count("${") == 1 and "}" not in text[:-1]

"""Parsers for `relay.config.schema.key`: each turns a written YAML value into a field value.

A parser is ``parse(reader, value, path)``; it raises `Invalid` for its own value, and section
parsers record the problems of their keys on the reader. Every number parser has a range, so a
limit that `relay check-config` accepts can never break the running relay.
"""

from __future__ import annotations

import ipaddress
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.config.schema import Invalid, Parser, Reader, describe, join, yaml_keys
from relay.secret import Secret

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAILBOX = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
URL = re.compile(r"https?://[^\s/]+.*")


def text(*, pattern: re.Pattern[str] | None = None, what: str = "", empty: str | None = None,
         secret: bool = False) -> Parser:
    """A string (``${...}`` expanded). ``pattern``/``what``: it must match, "is not {what}"
    otherwise. An empty string becomes ``empty`` when given (None: the empty string stays)."""

    def parse(reader: Reader, value: object, path: str) -> str | None:
        if value is None:
            return empty
        result = reader.text(value, secret=secret)
        if not result.value and empty is not None:
            return empty
        if pattern is not None and result.value and not pattern.fullmatch(result.value):
            raise Invalid(f"{result.shown} is not {what}")
        return result.value

    return parse


def optional_text(*, pattern: re.Pattern[str] | None = None, what: str = "", secret: bool = False) -> Parser:
    """A string, or None when null or empty."""
    inner = text(pattern=pattern, what=what, secret=secret)

    def parse(reader: Reader, value: object, path: str) -> str | None:
        result = inner(reader, value, path)
        return result or None

    return parse


def secret_text() -> Parser:
    """A secret string (control characters allowed, never echoed), or None when empty."""

    def parse(reader: Reader, value: object, path: str) -> Secret | None:
        if value is None:
            return None
        result = reader.text(value, secret=True)
        return Secret(result.value) if result.value else None

    return parse


def url() -> Parser:
    """An http(s) URL, or None."""
    return optional_text(pattern=URL, what="an http(s) URL")


def choice(options: Any, *, decimals: int | None = None) -> Parser:
    """One of the strings of a ``Literal[...]`` type. With ``decimals``, a number is taken as text
    with that many decimals (YAML reads ``min_tls_version: 1.0`` as the float 1.0)."""
    allowed: tuple[str, ...] = typing.get_args(options)

    def parse(reader: Reader, value: object, path: str) -> str:
        if decimals is not None and isinstance(value, float):
            value = f"{value:.{decimals}f}"
        result = reader.text(value)
        if result.value not in allowed:
            raise Invalid(f"{result.shown} is not one of {', '.join(allowed)}")
        return result.value

    return parse


def boolean() -> Parser:
    """true/false (also yes/no/on/off/1/0 as strings, e.g. from ${ENV})."""

    def parse(reader: Reader, value: object, path: str) -> bool:
        if isinstance(value, bool):
            return value
        shown = describe(value)
        if isinstance(value, str):
            result = reader.text(value)
            lowered, shown = result.value.lower(), result.shown
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
        raise Invalid(f"must be true or false (got {shown})")

    return parse


def number(low: float, high: float, *, integer: bool, allow_zero: bool = False) -> Parser:
    """A number in ``[low, high]`` (``low`` is 0: > 0 unless ``allow_zero``); strings are converted."""
    kind = "whole number" if integer else "number"

    def parse(reader: Reader, value: object, path: str) -> int | float:
        shown = describe(value)
        if isinstance(value, str):
            result = reader.text(value)
            shown = result.shown
            try:
                value = int(result.value) if integer else float(result.value)
            except ValueError:
                raise Invalid(f"must be a {kind} (got {shown})") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                integer and not isinstance(value, int)):
            raise Invalid(f"must be a {kind} (got {shown})")
        if not math.isfinite(value):
            raise Invalid(f"must be a finite {kind} (got {shown})")
        if value < low or (value == 0 and not allow_zero):
            bound = f">= {_plain(low)}" if allow_zero or low > 0 else "> 0"
            raise Invalid(f"must be {bound} (got {shown})")
        if value > high:
            raise Invalid(f"must be at most {_plain(high)} (got {shown})")
        return value

    return parse


def _plain(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def whole(low: int, high: int, *, allow_zero: bool = False) -> Parser:
    """A whole number in ``[low, high]``."""
    return number(low, high, integer=True, allow_zero=allow_zero)


def seconds(high: float, *, allow_zero: bool = False) -> Parser:
    """A duration in seconds, > 0 (or >= 0) and at most ``high``."""
    return number(0, high, integer=False, allow_zero=allow_zero)


def port(*, allow_zero: bool) -> Parser:
    """A TCP port; 0 (any free port) only where ``allow_zero``."""
    inner = number(-math.inf, math.inf, integer=True, allow_zero=True)

    def parse(reader: Reader, value: object, path: str) -> int:
        result = int(inner(reader, value, path))
        low = 0 if allow_zero else 1
        if not low <= result <= 65535:
            extra = " (0 means any free port)" if allow_zero else ""
            raise Invalid(f"port must be between {low} and 65535{extra} (got {result})")
        return result

    return parse


def file_path(default_name: str | None = None) -> Parser:
    """A path, relative to the YAML file's directory; null: ``default_name`` there (or None)."""

    def parse(reader: Reader, value: object, path: str) -> Path | None:
        written = None if value is None else reader.text(value).value
        if not written:
            return reader.base_dir / default_name if default_name else None
        resolved = Path(written).expanduser()
        return resolved if resolved.is_absolute() else reader.base_dir / resolved

    return parse


def networks() -> Parser:
    """A list of IP networks such as ``[127.0.0.1/32, 10.0.0.0/8]``."""

    def parse(reader: Reader, value: object, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid("must be a list of networks such as [127.0.0.1/32, 10.0.0.0/8]")
        nets = []
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            try:
                result = reader.text(item)
                nets.append(ipaddress.ip_network(result.value, strict=False))
            except Invalid as exc:
                reader.problem(where, exc.message)
            except ValueError:
                reader.problem(where, f"{result.shown} is not an IP network (e.g. 172.16.0.0/12)")
        return tuple(nets)

    return parse


def words() -> Parser:
    """A list of strings, or one string of space-separated words (OAuth scopes)."""

    def parse(reader: Reader, value: object, path: str) -> tuple[str, ...] | None:
        if isinstance(value, str):
            return tuple(reader.text(value).value.split())
        if not isinstance(value, list):
            raise Invalid("must be a list of scope strings")
        found = []
        for index, item in enumerate(value):
            try:
                found.append(reader.text(item).value)
            except Invalid as exc:
                reader.problem(f"{path}[{index}]", exc.message)
        return tuple(s for s in found if s)

    return parse


def text_list(what: str, *, pattern: re.Pattern[str] | None = None, item: str = "",
              single: bool = False) -> Parser:
    """A list of strings (each stripped); ``what`` names the expected content in messages. Each
    must match ``pattern`` (else "is not {item}"); with ``single`` one string stands for a list."""
    check = text(pattern=pattern, what=item)

    def parse(reader: Reader, value: object, path: str) -> tuple[str, ...]:
        if single and not isinstance(value, list):
            return (str(check(reader, value, path) or "").strip(),)
        if not isinstance(value, list):
            raise Invalid(f"must be {what}")
        found = []
        for index, entry in enumerate(value):
            try:
                found.append(str(check(reader, entry, path) or "").strip())
            except Invalid as exc:
                reader.problem(f"{path}[{index}]", exc.message)
        return tuple(found)

    return parse


def string_map() -> Parser:
    """A mapping of names to strings (free-form options for custom providers)."""

    def parse(reader: Reader, value: object, path: str) -> Mapping[str, str]:
        if not isinstance(value, dict):
            raise Invalid("must be a mapping of option names to strings")
        options: dict[str, str] = {}
        for name, item in value.items():
            try:
                options[str(name)] = reader.text(item).value
            except Invalid as exc:
                reader.problem(join(path, str(name)), exc.message)
        return options

    return parse


def section(cls: type, *, defaults: Mapping[str, object] | None = None,
            switch: str | None = None) -> Parser:
    """A nested mapping parsed by the keys of ``cls``; ``defaults`` fill what the class has no
    default for. With ``switch`` (e.g. ``enabled``), ``true``/``false`` stand for the whole section."""
    base = dict(defaults or {})

    def parse(reader: Reader, value: object, path: str) -> Any:
        if switch is not None and (value is None or isinstance(value, bool)):
            return cls(**{**base, switch: value is not False})
        values = reader.section_values(cls, value, path, defaults=base)
        if values is None:  # not a mapping (reported): go on with the defaults
            values = reader.section_values(cls, None, path, defaults=base) or {}
        # A null/empty value for a key with a per-section default keeps that default.
        return cls(**{**base, **{k: v for k, v in values.items() if not (k in base and v is None)}})

    return parse


def optional_section(cls: type, *, shorthand: str | None = None, switch: bool = False) -> Parser:
    """A nested section that is absent by default (None); with ``shorthand``, a plain string is
    that key (``proxy: http://proxy:3128``); with ``switch``, ``true`` is the section with its
    defaults and ``false`` is None. Missing required keys (reported) give None."""

    def parse(reader: Reader, value: object, path: str) -> Any:
        if switch and isinstance(value, bool):
            return cls() if value else None
        if shorthand is not None and isinstance(value, str):
            value = {shorthand: value}
        values = reader.section_values(cls, value, path)
        if values is None:
            return None
        written = value if isinstance(value, dict) else {}
        if any(spec.required and written.get(name) is None for name, (_, spec) in yaml_keys(cls).items()):
            return None  # "is required" was reported
        return cls(**values)

    return parse


def named(cls: type, *, what: str, nonempty: bool = False) -> Parser:
    """A mapping of names to sections of ``cls`` (which has a ``name`` field, not a key)."""

    def parse(reader: Reader, value: object, path: str) -> Mapping[str, Any]:
        if value is None and not nonempty:
            return {}
        if not isinstance(value, dict) or (nonempty and not value):
            raise Invalid(f"must be a mapping of {what}" + (" (at least one)" if nonempty else ""))
        entries: dict[str, Any] = {}
        for name, item in value.items():
            where = join(path, str(name))
            reader.seen(where)
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                reader.problem(where, "a name must be letters, digits, '.', '_' or '-'")
                continue
            values = reader.section_values(cls, item, where)
            if values is not None:
                entries[name] = cls(name=name, **values)
        return entries

    return parse


@dataclass(frozen=True)
class EndpointOverride:
    """An upstream server as written: off, or the keys given (the provider supplies the rest)."""

    off: bool = False
    values: Mapping[str, Any] = field(default_factory=dict, hash=False)  # UpstreamEndpoint field -> value


def endpoint(cls: type, service: str) -> Parser:
    """An upstream server section (keys of ``cls`` under ``service``), ``false`` for off."""

    def parse(reader: Reader, value: object, path: str) -> EndpointOverride:
        if value is False:
            return EndpointOverride(off=True)
        if value is None or value is True:
            return EndpointOverride()
        values = reader.section_values(cls, value, path, under=service, enforce_required=False)
        return EndpointOverride(values=values or {})

    return parse

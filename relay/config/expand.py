"""`${ENV_VAR}` and `${file:/run/secrets/x}` expansion in configuration string values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from relay.config.sources import MAX_SECRET_FILE_BYTES, SourceError, read_regular_file

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
MAX_EXPANDED_CHARS = 256 * 1024  # the caller refuses values over 64 Ki characters anyway
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpansionError(ValueError):
    """A reference could not be expanded; the message names the variable or file and the fix."""


def expand_value(text: str, env: Mapping[str, str], base_dir: Path | None = None,
                 limit: int = MAX_EXPANDED_CHARS) -> str:
    """Expand every ``${NAME}`` / ``${file:PATH}`` in ``text``; ``$${`` stands for a literal ``${``.

    A relative ``file:`` path is taken relative to ``base_dir`` (the YAML file's directory). The
    result is not expanded again, so a secret containing ``${`` stays as it is. Expansion stops
    with an error once the result would pass ``limit`` characters (``${X}`` repeated in a
    value must not multiply a large variable into gigabytes).
    """
    produced = [len(text)]

    def substitute(match: re.Match[str]) -> str:
        value = _substitute(match, env, base_dir)
        produced[0] += len(value)
        if produced[0] > limit:
            raise ExpansionError(f"expands to more than {limit} characters; shorten the value or "
                                 "the referenced variables/files")
        return value

    return _REFERENCE.sub(substitute, text)


def _substitute(match: re.Match[str], env: Mapping[str, str], base_dir: Path | None) -> str:
    """The replacement for one reference."""
    if match.group(0) == "$${":
        return "${"
    if match.group(1) is None:
        raise ExpansionError("'${' without a closing '}' (write $${ for a literal ${)")
    ref = match.group(1).strip()
    if ref.startswith("file:"):
        path = Path(ref[5:].strip()).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            content = read_regular_file(path, MAX_SECRET_FILE_BYTES).decode("utf-8")
        except (SourceError, UnicodeDecodeError) as exc:
            # Never str(exc) of a decode error: it quotes bytes of the secret.
            reason = str(exc) if isinstance(exc, SourceError) else "not UTF-8 text"
            raise ExpansionError(f"cannot read ${{file:{path}}}: {reason}; create the file or fix "
                                 "the path") from None
        return content.rstrip("\r\n")
    if not _ENV_NAME.fullmatch(ref):
        raise ExpansionError(f"'${{{ref}}}' is not a valid reference (use ${{ENV_VAR}} or "
                             "${file:/path}; write $${ for a literal ${)")
    if ref not in env:
        raise ExpansionError(f"environment variable {ref} is not set (referenced as ${{{ref}}}); "
                             f"set it or use ${{file:/path}} instead")
    return env[ref]

"""`${ENV_VAR}` and `${file:/run/secrets/x}` expansion in configuration string values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpansionError(ValueError):
    """A reference could not be expanded; the message names the variable or file and the fix."""


def expand_value(text: str, env: Mapping[str, str]) -> str:
    """Expand every ``${NAME}`` / ``${file:PATH}`` in ``text``; ``$${`` stands for a literal ``${``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        ref = match.group(1).strip()
        if ref.startswith("file:"):
            path = Path(ref[5:].strip()).expanduser()
            try:
                content = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
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

    return _REFERENCE.sub(substitute, text)

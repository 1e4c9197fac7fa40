"""Keep `relay serve` from importing optional modules it never uses.

Two of the relay's dependencies import other packages merely because they happen to be installed:
``import httpx`` runs ``from ._main import main`` (its command-line client: click, pygments and
rich, when present) and httpcore does ``import trio`` to detect that event loop (trio brings
attrs, outcome, sortedcontainers). In an environment that has them (a shared virtualenv, a system
Python, a development machine) the relay's first token request imported ~6 MiB of code it never
runs (measured with ``python -m bench.memory``, bench/README.md); a clean install (the Docker image)
does not have them. Both imports tolerate ImportError by design (httpx falls back to a stub CLI,
httpcore to asyncio/anyio only), so marking the modules as absent before httpx is imported costs
nothing. Only the relay's own process entry point calls `skip_unused_optional_imports`; library
code and tests are left alone.
"""

from __future__ import annotations

import sys

UNUSED_OPTIONAL_IMPORTS = ("httpx._main", "trio")
"""Modules the relay never uses that its dependencies import when installed."""


def skip_unused_optional_imports() -> list[str]:
    """Mark `UNUSED_OPTIONAL_IMPORTS` as absent (``import`` raises ImportError) unless already
    imported; return the names marked."""
    marked = []
    for name in UNUSED_OPTIONAL_IMPORTS:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # the documented "not importable" marker
            marked.append(name)
    return marked

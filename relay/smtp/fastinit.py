"""aiosmtpd's per-connection introspection, done once per class instead of once per connection.

``aiosmtpd.smtp.SMTP.__init__`` runs ``inspect.getmembers`` over the whole protocol object (every
attribute, properties included) and ``inspect.signature`` on the EHLO hook for *each* connection:
half of the relay's CPU per login in a burst of logins (measured with py-spy). During our
construction, `cheap_introspection` lets aiosmtpd see an ``inspect`` whose ``getmembers`` returns
only the ``auth_*`` members (all aiosmtpd keeps of them) and whose ``signature`` is cached per
function. Used only with the aiosmtpd versions whose ``__init__`` was checked for that
(`SUPPORTED`); tests/unit/test_smtp_fastinit.py proves both ways build the same tables.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import aiosmtpd
import aiosmtpd.smtp as aiosmtpd_smtp

SUPPORTED = ("1.4.",)
"""aiosmtpd versions whose SMTP.__init__ uses getmembers only to collect ``auth_*`` members."""


class _AuthMembersInspect:
    """Stands in for the ``inspect`` module inside aiosmtpd.smtp (everything else delegates)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    @staticmethod
    def getmembers(obj: object, predicate: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
        """``inspect.getmembers`` restricted to the ``auth_*`` names (sorted, like the original)."""
        cls: Any = type(obj)  # typeshed's type[object] does not count as Hashable for lru_cache
        names = _class_auth_names(cls)
        own = [name for name in getattr(obj, "__dict__", ()) if name.startswith("auth_")]
        if own:
            names = tuple(sorted(set(names).union(own)))
        members = [(name, getattr(obj, name)) for name in names]
        return [m for m in members if predicate is None or predicate(m[1])]

    @staticmethod
    def signature(fn: Callable[..., Any]) -> inspect.Signature:
        """``inspect.signature`` of a bound method: its function's, minus ``self``, cached."""
        func = getattr(fn, "__func__", None)
        return inspect.signature(fn) if func is None else _method_signature(func)


@functools.lru_cache(maxsize=64)
def _class_auth_names(cls: type) -> tuple[str, ...]:
    return tuple(name for name in dir(cls) if name.startswith("auth_"))


@functools.lru_cache(maxsize=64)
def _method_signature(func: Callable[..., Any]) -> inspect.Signature:
    """The signature of ``func`` bound to an instance (its first parameter dropped)."""
    full = inspect.signature(func)
    return full.replace(parameters=list(full.parameters.values())[1:])


_SHIM = _AuthMembersInspect()
ENABLED = aiosmtpd.__version__.startswith(SUPPORTED)


@contextlib.contextmanager
def cheap_introspection() -> Iterator[None]:
    """While inside (synchronous code only), aiosmtpd.smtp uses the cached introspection."""
    if not ENABLED:
        yield
        return
    aiosmtpd_smtp.inspect = _SHIM  # type: ignore[attr-defined,assignment]  # aiosmtpd.smtp's module global
    try:
        yield
    finally:
        aiosmtpd_smtp.inspect = inspect  # type: ignore[attr-defined]  # aiosmtpd.smtp's module global

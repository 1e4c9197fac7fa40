"""Find the provider class a credentials entry names: a built-in, a plug-in, or the user's class.

``provider:`` in the YAML is one of ``microsoft``, ``google``, ``generic``; the name of a plug-in
installed under the entry-point group ``relay.providers``; or ``package.module:ClassName``.
"""

from __future__ import annotations

import importlib

from relay.errors import ConfigError
from relay.providers.base import OAuthProvider

ENTRY_POINT_GROUP = "relay.providers"

_BUILTINS = {
    "microsoft": "relay.providers.microsoft:MicrosoftProvider",
    "google": "relay.providers.google:GoogleProvider",
    "generic": "relay.providers.generic:GenericProvider",
}

_REQUIRED_METHODS = (
    "scopes",
    "authorization_url",
    "exchange_code",
    "refresh",
    "start_device_authorization",
    "poll_device_token",
    "client_credentials",
    "config_problems",
)


def load_provider_class(spec: str) -> type[OAuthProvider]:
    """Return the provider class for ``spec``; raise ConfigError naming what is missing and the fix."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("", "provider is empty: use microsoft, google, generic or package.module:ClassName")
    if spec in _BUILTINS:
        return _check(_import_target(_BUILTINS[spec], spec), spec)
    if ":" in spec:
        return _check(_import_target(spec, spec), spec)
    # Only for plug-in names: importlib.metadata (and the email package it parses metadata with)
    # stays out of a relay that uses the built-in providers.
    from importlib.metadata import entry_points  # noqa: PLC0415

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                cls = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import-time failure of a plug-in is a config problem
                raise ConfigError(
                    "", f"provider plug-in '{spec}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                ) from None
            return _check(cls, spec)
    known = ", ".join(sorted(set(_BUILTINS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}))
    raise ConfigError(
        "",
        f"unknown provider '{spec}': use one of {known}, or 'package.module:ClassName' for your own "
        "OAuthProvider subclass (or install a plug-in registering the entry point group "
        f"'{ENTRY_POINT_GROUP}')",
    )


def _import_target(target: str, spec: str) -> object:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError("", f"provider '{spec}' must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            "", f"provider '{spec}': cannot import module '{module_name}' ({exc}); install the package "
            "or fix the module path"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while importing
        raise ConfigError(
            "", f"provider '{spec}': importing module '{module_name}' failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                "", f"provider '{spec}': module '{module_name}' has no attribute '{attr}'; "
                "check the class name"
            ) from None
    return obj


def _check(obj: object, spec: str) -> type[OAuthProvider]:
    """Verify ``obj`` is an OAuthProvider subclass with the full interface."""
    if not isinstance(obj, type) or not issubclass(obj, OAuthProvider):
        raise ConfigError(
            "", f"provider '{spec}' is not a subclass of relay.providers.base.OAuthProvider; "
            "derive your class from it (see docs/architecture.md)"
        )
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(obj, m, None))]
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        missing.append("name (class attribute, a non-empty string)")
    if missing:
        raise ConfigError(
            "", f"provider '{spec}' ({obj.__module__}.{obj.__qualname__}) lacks: {', '.join(missing)}; "
            "implement them (see relay.providers.base.OAuthProvider)"
        )
    abstract = sorted(getattr(obj, "__abstractmethods__", ()))
    if abstract:
        raise ConfigError(
            "", f"provider '{spec}' ({obj.__module__}.{obj.__qualname__}) does not implement the abstract "
            f"method(s) {', '.join(abstract)}; implement them"
        )
    return obj

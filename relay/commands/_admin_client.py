"""A small client of the running relay's admin listener, for `relay health` and `relay status`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from relay.commands._ops import connect_host
from relay.config.model import AdminConfig
from relay.errors import RelayError


class AdminUnreachable(RelayError):
    """The admin listener did not answer (the relay is not running, or on another port)."""

    exit_code = 1


@dataclass(frozen=True)
class AdminAnswer:
    """An HTTP status and its decoded JSON body (None when the body is not JSON)."""

    status: int
    body: object


def admin_url(admin: AdminConfig, path: str) -> str:
    """The URL of ``path`` on the admin listener (a wildcard bind is reached on loopback)."""
    host = connect_host(admin.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{admin.port}{path}"


def admin_get(admin: AdminConfig, path: str, timeout_s: float) -> AdminAnswer:
    """GET ``path`` with the bearer token when one is configured."""
    request = urllib.request.Request(admin_url(admin, path), method="GET")  # noqa: S310 - http:// we built
    if admin.auth_token is not None:
        request.add_header("Authorization", f"Bearer {admin.auth_token.reveal()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(f"the admin listener at {admin_url(admin, '')} does not answer ({reason}); "
                               "is `relay serve` running with this configuration?") from None
    try:
        body: object = json.loads(raw)
    except ValueError:
        body = None
    return AdminAnswer(status, body)

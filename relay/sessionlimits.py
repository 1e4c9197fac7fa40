"""Per-client connection slots and per-session command budgets, shared by both listeners.

- `ClientSlots`: at most limits.max_connections_per_client open connections per client (a client
  as `relay.localauth.client_key` defines it: IPv4 address, IPv6 /64). Loopback clients are
  exempt, as in Postfix (all local apps share 127.0.0.0/8, so a cap cannot tell them apart); the
  login deadline and the command budget still bound what a local connection can hold.
- `CommandBudget`: a session may send at most limits.max_commands_without_progress commands that
  achieve nothing (NOOP, RSET, HELP, VRFY, refused or unknown commands) since its last progress (a
  login, a MAIL accepted, a message fetched); then it is closed. Unlimited NOOPs would let one
  client keep a connection slot forever.
"""

from __future__ import annotations

import ipaddress

from relay.localauth import client_key


class ClientSlots:
    """Counts open connections per client; `take` refuses one over the per-client cap."""

    def __init__(self, per_client: int, *, exempt_loopback: bool = True) -> None:
        self.per_client = per_client
        self.exempt_loopback = exempt_loopback
        self._open: dict[str, int] = {}

    def take(self, client_ip: str) -> str | None:
        """Take a slot: the key to `release` later, or None when the client is at its cap.

        Loopback clients get a slot without counting (key ``""``)."""
        key = client_key(client_ip)
        if self.exempt_loopback and _is_loopback_key(key):
            return ""
        count = self._open.get(key, 0)
        if count >= self.per_client:
            return None
        self._open[key] = count + 1
        return key

    def release(self, key: str) -> None:
        """Give back a slot taken with `take` (the empty loopback key is ignored)."""
        if not key:
            return
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open_for(self, client_ip: str) -> int:
        """Open counted connections of the client ``client_ip`` belongs to."""
        return self._open.get(client_key(client_ip), 0)


def _is_loopback_key(key: str) -> bool:
    try:
        return ipaddress.ip_network(key, strict=False).is_loopback
    except ValueError:
        return False


class CommandBudget:
    """Commands without progress left in a session (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self) -> bool:
        """Count one command that achieved nothing; False once the budget is exceeded."""
        self.spent += 1
        return self.spent <= self.limit

    def progress(self) -> None:
        """The session did something useful: the budget starts over."""
        self.spent = 0

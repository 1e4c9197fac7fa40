"""`allowed_senders`: which MAIL FROM addresses an account may use (pure, no I/O).

The login identity (``mailbox``) and the addresses an account may send as are different things
(a shared mailbox, send-as). ``allowed_senders`` lists addresses and ``*@domain`` patterns;
empty means any address. A MAIL FROM outside the list is refused locally with ``550 5.7.1``
naming the setting: it saves an upstream SendAs rejection and stops a compromised app from
spoofing other addresses. ``<>`` (the null sender of bounces) must be listed to be allowed.
"""

from __future__ import annotations

import re

from relay.config.model import AccountConfig

NULL_SENDER = "<>"
_ADDRESS = re.compile(r"[^@\s<>\x00-\x1f\x7f]+@[^@\s<>\x00-\x1f\x7f]+")
_DOMAIN_PATTERN = re.compile(r"\*@([^@\s*<>\x00-\x1f\x7f]+)")


def sender_pattern_problem(entry: str) -> str | None:
    """Why ``entry`` is not a valid allowed_senders item, or None (for the config loader)."""
    if entry == NULL_SENDER or _DOMAIN_PATTERN.fullmatch(entry) or (
            _ADDRESS.fullmatch(entry) and "*" not in entry):
        return None
    return f"'{entry}' is neither an address (name@example.com), '*@example.com' nor '<>'"


def sender_allowed(allowed: tuple[str, ...], address: str) -> bool:
    """True if ``address`` (MAIL FROM without brackets; ``<>`` or empty for the null sender) may
    be used under ``allowed`` (empty: everything). Comparison ignores case."""
    if not allowed:
        return True
    if address in ("", NULL_SENDER):
        return NULL_SENDER in allowed
    wanted = address.lower()
    domain = wanted.rpartition("@")[2]
    for entry in allowed:
        item = entry.lower()
        if item == wanted or (item.startswith("*@") and "@" in wanted and item[2:] == domain):
            return True
    return False


def sender_refusal(account: AccountConfig, address: str) -> str | None:
    """The ``550 5.7.1`` reply for a MAIL FROM this account may not use, or None when allowed."""
    if sender_allowed(account.allowed_senders, address):
        return None
    shown = address if address not in ("", NULL_SENDER) else "<>"
    return (f"550 5.7.1 Sender {shown} is not allowed for this login; "
            f"see accounts.{account.name}.allowed_senders")

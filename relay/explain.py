"""Explain a provider's reply: which cause, which fix, for the operator.

One table (`relay.explain_table.EXPLANATIONS`, of `Explanation` values, defined beside it) maps
upstream SMTP/POP3 replies and token-endpoint errors (AADSTS codes) to a cause and a fix.
Everything here is pure: `explain(text)` finds the first matching entry; `Explanation.render`
fills in the account, mailbox and setting names. `ExplainedOnce` remembers which (account, cause)
pairs were already logged, so a log shows each cause once per account instead of on every failed
message.

Used by the SMTP/POP3 failure logs, `relay check`, the admin status and `relay explain "TEXT"`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.explain_table import Explanation

log = logging.getLogger("relay.explain")


def explain(text: str) -> Explanation | None:
    """Return the first table entry matching ``text`` (a reply, log line or error), or None."""
    from relay.explain_table import EXPLANATIONS  # noqa: PLC0415 - the table is only read when needed

    for entry in EXPLANATIONS:
        if entry.matches(text):
            return entry
    return None


def explain_text(text: str, *, account: str | None = None, mailbox: str | None = None,
                 credentials: str | None = None) -> str:
    """A human answer for any pasted text: the explanation, or ``unknown`` with the raw text."""
    entry = explain(text)
    if entry is None:
        return f"unknown: no explanation for {text.strip()!r}; check the provider's documentation"
    return (f"{entry.provider}: {entry.render(account=account, mailbox=mailbox, credentials=credentials)}"
            f" [source: {entry.source}]")


def explanation_suffix(text: str | None, *, account: str | None = None, mailbox: str | None = None,
                       credentials: str | None = None) -> str:
    """`` — cause. Fix: ...`` for appending to a log line, or ``""`` when the text is unknown."""
    entry = explain(text) if text else None
    if entry is None:
        return ""
    return f" — {entry.render(account=account, mailbox=mailbox, credentials=credentials)}"


class ExplainedOnce:
    """Remembers which (account, cause) pairs were already explained in the log (thread-safe)."""

    def __init__(self, limit: int = 10000) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._limit = limit

    def first_time(self, account: str, text: str | None) -> Explanation | None:
        """The explanation of ``text`` if it is known and new for ``account``, else None."""
        entry = explain(text) if text else None
        if entry is None:
            return None
        with self._lock:
            key = (account, entry.key)
            if key in self._seen:
                return None
            if len(self._seen) >= self._limit:
                self._seen.clear()
            self._seen.add(key)
        return entry

    def forget(self, account: str) -> None:
        """Explain this account's causes again (e.g. after a configuration reload)."""
        with self._lock:
            self._seen = {k for k in self._seen if k[0] != account}


EXPLAINED_ONCE = ExplainedOnce()
"""The process-wide memory used by the SMTP/POP3 failure logs."""


def log_explanation(account: str, mailbox: str | None, text: str | None, *,
                    memory: ExplainedOnce = EXPLAINED_ONCE) -> bool:
    """Log cause and fix of a provider reply the first time it happens for ``account``; True if logged."""
    entry = memory.first_time(account, text)
    if entry is None:
        return False
    log.warning("account %s: upstream said %r: %s [%s]", account, (text or "").strip()[:300],
                entry.render(account=account, mailbox=mailbox), entry.key)
    return True

"""Session limits of the SMTP listener (relay.sessionlimits), as a base of `RelaySMTP`.

The per-client connection cap (421 at connect), the login deadline (421 unless AUTH succeeded or a
MAIL was accepted in time) and the budget of commands without progress (NOOP, RSET, HELP, VRFY,
4xx/5xx replies; reset by a successful AUTH or MAIL). `RelaySMTP` sets the attributes declared
here in its constructor, calls `_admit` when a connection is made and `_wasted` for refusals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Self

from aiosmtpd.smtp import syntax

from relay.config.model import LimitsConfig
from relay.sessionlimits import ClientSlots, CommandBudget
from relay.smtp.commandloop import CommandLoop
from relay.smtp.connection import ConnectionState

log = logging.getLogger("relay.smtp")


class SessionLimits(CommandLoop):
    """The per-client cap, the login deadline and the command budget of one SMTP connection."""

    state: ConnectionState
    _slots: ClientSlots | None
    _slot: str | None
    _refused: bool  # refused at connect (its transport is closed at once: nothing more is read)
    _budget: CommandBudget | None
    _login_timeout_s: float
    _login_timer: asyncio.TimerHandle | None
    _on_open: Callable[[Any], None] | None  # called with the RelaySMTP once admitted

    def apply_limits(self, limits: LimitsConfig, slots: ClientSlots,
                     on_open: Callable[[Self], None] | None = None) -> None:
        """Enforce the per-client cap, login deadline and command budget (before the connection);
        ``on_open`` is called once the connection is admitted (with implicit TLS: after the
        handshake, so a failed one never counts as a session)."""
        self._on_open = on_open
        self._slots = slots
        self._budget = CommandBudget(limits.max_commands_without_progress)
        self._login_timeout_s = limits.login_timeout_s

    def _admit(self, transport: asyncio.BaseTransport) -> bool:
        """Take a per-client slot and arm the login deadline; False: refused with 421."""
        if self._slots is None:
            return True
        self._slot = self._slots.take(self.state.client_ip)
        if self._slot is None:
            self._refused = True
            log.warning("smtp: refusing a connection from %s: limits.max_connections_per_client (%d) "
                        "reached for this client", self.state.client_ip, self._slots.per_client)
            transport.write(b"421 4.7.0 Too many connections from your address, try again later\r\n")  # type: ignore[attr-defined]
            transport.close()
            return False
        self._login_timer = self.loop.call_later(self._login_timeout_s, self._login_too_late)
        if self._on_open is not None:
            self._on_open(self)
        return True

    def _login_too_late(self) -> None:
        self._login_timer = None
        if self.transport is not None:
            log.info("smtp %s: no login within limits.login_timeout_s (%.0f s) from %s; closing",
                     self.state.session_id, self._login_timeout_s, self.state.client_address)
            self.transport.write(b"421 4.4.2 Login timeout, closing connection\r\n")  # type: ignore[attr-defined]
            self.close()

    def progress(self) -> None:
        """The session did something useful (logged in, MAIL accepted): no deadline, fresh budget."""
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if self._budget is not None:
            self._budget.progress()

    async def _wasted(self) -> bool:
        """Count a command without progress; True (after a 421 and close) once over the budget."""
        if self._budget is None or self._budget.spend():
            return False
        log.info("smtp %s: %d commands without progress from %s; closing", self.state.session_id,
                 self._budget.limit, self.state.client_address)
        self._budget = None  # the 421 below must not count again
        await super().push("421 4.7.0 Too many commands without progress, closing connection")
        self.close()
        return True

    # --- commands that count against the budget ------------------------------------------------

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._wasted():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._wasted():
            await super().smtp_RSET(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._wasted():
            await super().smtp_HELP(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._wasted():
            await super().smtp_VRFY(arg)

    def close(self) -> None:
        """Close the client connection."""
        if self.transport is not None:
            self.transport.close()

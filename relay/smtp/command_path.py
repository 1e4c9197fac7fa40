"""MAIL, RCPT and replies on the per-message path of `RelaySMTP` (a base class of it).

* ``smtp_MAIL`` / ``smtp_RCPT``: the usual ``FROM:<local@domain>`` / ``TO:<local@domain>`` with no
  parameters (`plain_address`) goes straight to the handler hook after the same state checks as
  aiosmtpd's (greeting, login, transaction order, local-part length), instead of through its general
  parsing (keyword strip, address parser, parameter table, two hook wrappers); every other form,
  and every error reply, still comes from aiosmtpd. A successful MAIL counts as session progress.
* ``_getaddr``: a fast path for plain ``<local@domain>`` (same result as aiosmtpd's RFC 5322
  parser) and the null reverse-path ``<>``; ``_getparams``: a non-ASCII SIZE is a syntax error.
* ``push``: aiosmtpd's built-in error replies get RFC 3463 enhanced status codes
  (`relay.smtp.builtin_replies`), 4xx/5xx count against the command budget, 235 is progress; the
  write skips ``drain()`` (a coroutine per reply) unless the buffer is full or the connection
  closing (`relay.drain`), and aiosmtpd's ``<<`` debug line unless ``mail.log`` would show it.

tests/unit/test_smtp_command_path.py proves `plain_address` agrees with aiosmtpd's parsing.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiosmtpd.smtp import MISSING, syntax

from relay.drain import needs_drain, write_now
from relay.smtp.builtin_replies import add_enhanced_code
from relay.smtp.session_limits import SessionLimits

mail_log = logging.getLogger("mail.log")  # aiosmtpd's logger

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_ANGLE_ADDR = re.compile(rf"[ \t]*<({_ADDRESS})>[ \t]*([^\s(][^\r\n]*)?\Z")
_PLAIN_MAIL = re.compile(rf"[Ff][Rr][Oo][Mm]:[ \t]*<({_ADDRESS})>\Z")
_PLAIN_RCPT = re.compile(rf"[Tt][Oo]:[ \t]*<({_ADDRESS})>\Z")


def plain_address(arg: str | None, pattern: re.Pattern[str]) -> str | None:
    """The address of a plain ``FROM:<a@b>`` (`_PLAIN_MAIL`) or ``TO:<a@b>`` (`_PLAIN_RCPT`)
    argument: dot-atoms, no comments, quoting or parameters. None for anything else."""
    if arg is None:
        return None
    match = pattern.match(arg)
    return match.group(1) if match is not None else None


class CommandPath(SessionLimits):
    """MAIL, RCPT, address parsing and ``push`` of `RelaySMTP` (see the module docstring)."""

    def _plain_ok(self, address: str | None, hook: Any, *, in_transaction: bool) -> bool:
        """True when aiosmtpd would hand ``address`` to ``hook`` without any error reply."""
        session, envelope = self.session, self.envelope
        return (address is not None and hook is not None and session is not None
                and envelope is not None and bool(session.host_name)
                and not (self._auth_required and not session.authenticated)
                and bool(envelope.mail_from) == in_transaction
                and not (self.local_part_limit
                         and len(address.rpartition("@")[0]) > self.local_part_limit))

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        address = plain_address(arg, _PLAIN_MAIL)
        hook: Any = self._handle_hooks.get("MAIL")
        if not self._plain_ok(address, hook, in_transaction=False):
            await super().smtp_MAIL(arg)
        else:
            session, envelope = self.session, self.envelope
            assert session is not None and envelope is not None and address is not None
            envelope.smtp_utf8 = False
            status = await hook(self, session, envelope, address, [])
            if status is MISSING:
                envelope.mail_from = address
                status = "250 OK"
            if self._mail_info:
                mail_log.info("%r sender: %s", session.peer, address)
            if self.send_reply(status):
                await self.after_reply(status)
        if self.envelope is not None and self.envelope.mail_from:
            self.progress()

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        address = plain_address(arg, _PLAIN_RCPT)
        hook: Any = self._handle_hooks.get("RCPT")
        if not self._plain_ok(address, hook, in_transaction=True):
            await super().smtp_RCPT(arg)
            return
        session, envelope = self.session, self.envelope
        assert session is not None and envelope is not None and address is not None
        status = await hook(self, session, envelope, address, [])
        if status is MISSING:
            envelope.rcpt_tos.append(address)
            status = "250 OK"
        if self._mail_info:
            mail_log.info("%r recip: %s", session.peer, address)
        if self.send_reply(status):
            await self.after_reply(status)

    # --- addresses ----------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, plus the null reverse-path ``<>`` (RFC 5321 4.5.5: bounces
        and DSNs), returned as the non-empty marker ``"<>"`` so aiosmtpd's MAIL/RCPT checks (which
        treat an empty sender as "no MAIL yet") keep working; the handler forwards it as ``<>``."""
        stripped = arg.lstrip()
        if stripped.startswith("<>"):
            return "<>", stripped[2:]
        # The usual <local@domain> (dot-atoms, no comments or quoting) gets the same result as
        # aiosmtpd's RFC 5322 parser (email._header_value_parser), which costs ~0.1 ms per MAIL
        # and per RCPT; anything else still goes to that parser.
        match = _SIMPLE_ANGLE_ADDR.match(arg)
        if match is not None:
            address, rest = match.group(1), match.group(2) or ""
            local_part = address.rpartition("@")[0]
            if self.local_part_limit and len(local_part) > self.local_part_limit:
                return None, None
            return address, rest
        return super()._getaddr(arg)

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        """aiosmtpd's MAIL/RCPT parameter parser; a non-ASCII SIZE value (``SIZE=¹`` passes
        str.isdigit() but not int()) is a syntax error instead of an unhandled ValueError."""
        result = super()._getparams(params)
        size = result.get("SIZE") if result else None
        if isinstance(size, str) and not size.isascii():
            return None
        return result

    # --- output -------------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if self.send_reply(status):
            await self.after_reply(status)

    def send_reply(self, status: str | bytes) -> bool:
        """Write a reply now (a 235 counts as progress); True when the caller must still await
        `after_reply` (the buffer is full or the connection closing, or a refusal to count
        against the budget). The per-message replies go out this way, without a coroutine."""
        kind = _PLAIN
        if isinstance(status, str):
            known = _PUSHED.get(status) if self.enable_SMTPUTF8 else None
            if known is None:
                known = _pushed(status, "utf-8" if self.enable_SMTPUTF8 else "ascii")
                if self.enable_SMTPUTF8:
                    if len(_PUSHED) >= _MAX_PUSHED:
                        _PUSHED.clear()  # unique upstream texts must not grow it forever
                    _PUSHED[status] = known
            wire, kind = known
        else:
            wire = status + b"\r\n"
        if kind is _PROGRESS:
            self.progress()
        drain = write_now(self._writer.transport, wire)
        if self._mail_debug:
            assert self.session is not None
            mail_log.debug("%r << %r", self.session.peer, wire[:-2])
        return kind is _WASTED or drain

    async def after_reply(self, status: str | bytes) -> None:
        """The rest of `push` after `send_reply` said so: drain, then count a refusal."""
        writer = self._writer
        if needs_drain(writer):
            await writer.drain()
        if isinstance(status, str) and _kind(add_enhanced_code(status)) is _WASTED:
            await self._wasted()


_PLAIN, _PROGRESS, _WASTED = "plain", "progress", "wasted"
_MAX_PUSHED = 256
_PUSHED: dict[str, tuple[bytes, str]] = {}
"""Reply text -> (wire bytes, kind), for the replies a relay sends again and again."""


def _pushed(status: str, encoding: str) -> tuple[bytes, str]:
    """The wire bytes of a reply (with aiosmtpd's built-ins given enhanced codes) and its kind:
    235 is progress; 4xx/5xx but 421 count against the command budget."""
    status = add_enhanced_code(status)
    return bytes(status, encoding) + b"\r\n", _kind(status)


def _kind(status: str) -> str:
    """235 is progress; 4xx/5xx but 421 count against the command budget."""
    if status.startswith("235"):
        return _PROGRESS
    if status[:1] in ("4", "5") and not status.startswith("421"):
        return _WASTED
    return _PLAIN

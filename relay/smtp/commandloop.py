"""aiosmtpd's per-connection command loop, with fewer Python-level steps per command line.

aiosmtpd 1.4's ``SMTP._handle_client`` reads a line, then logs it twice through
``sanitized_log`` (a list, a regex and a logger call each, even with ``mail.log`` off, as the relay
always has it: `relay.logging_setup` keeps it at WARNING or above), parses and checks it, re-arms
the idle timer and dispatches. On a relay sending many small messages that loop is a measurable
part of the per-message cost (bench/README.md, "Against emailproxy"). `CommandLoop` runs the same
loop with the same checks, replies and exception handling, in the same order; what it leaves out is
the line logging while ``mail.log`` would drop it anyway. With a PROXY-protocol timeout, or an
aiosmtpd version whose loop was not compared with this one (`SUPPORTED`), aiosmtpd's own runs.
tests/unit/test_smtp_commandloop.py runs the same client dialogues (bad lines included) against
both loops and compares every reply.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import MutableMapping

import aiosmtpd
from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    SMTP,
    TLSSetupException,
    sanitized_log,
)

SUPPORTED = ("1.4.",)
"""aiosmtpd versions whose ``_handle_client`` this loop reproduces."""
ENABLED = aiosmtpd.__version__.startswith(SUPPORTED)

mail_log = logging.getLogger("mail.log")  # aiosmtpd's logger


class CommandLoop(SMTP):
    """`SMTP` with the lean command loop (see the module docstring)."""

    # Whether mail.log shows INFO / DEBUG lines, read once per connection by the lean loop (the
    # relay keeps mail.log at WARNING+); True: ask the logger each time (aiosmtpd's own loop).
    _mail_info = True
    _mail_debug = True

    async def _handle_client(self) -> None:
        if not ENABLED or self._proxy_timeout is not None:
            await super()._handle_client()
            return
        assert self.session is not None
        mail_log.info("%r handling connection", self.session.peer)
        await self.push(f"220 {self.hostname} {self.__ident__}")
        call_limit: MutableMapping[str, int] = {}
        if self._enforce_call_limit:
            call_limit = collections.defaultdict(lambda: self._call_limit_default,
                                                 self._call_limit_base)
        self._bogus_budget = BOGUS_LIMIT
        self._mail_info = mail_log.isEnabledFor(logging.INFO)
        self._mail_debug = mail_log.isEnabledFor(logging.DEBUG)
        reader = self._reader
        while self.transport is not None:
            try:
                try:
                    line: bytes = await reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    await self._skip_long_line(error)
                    continue
                if self._mail_info:  # the relay keeps mail.log at WARNING+
                    sanitized_log(mail_log.debug, "_handle_client readline: %r", line)
                    sanitized_log(mail_log.info, "%r >> %r", self.session.peer,
                                  line.rstrip(b"\r\n"))
                await self._dispatch(line.rstrip(b"\r\n"), call_limit)
            except asyncio.CancelledError:
                # The connection got reset during the DATA command.
                mail_log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except ConnectionResetError:
                mail_log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:  # noqa: BLE001 - aiosmtpd's contract: answer, keep serving
                await self._answer_exception(error)

    async def _skip_long_line(self, error: asyncio.LimitOverrunError) -> None:
        """Line too long: read until its end, then answer 500."""
        await self._reader.read(error.consumed)
        while True:
            try:
                await self._reader.readuntil()
                break
            except asyncio.LimitOverrunError as e:
                await self._reader.read(e.consumed)
        await self.push("500 Command line too long")

    async def _dispatch(self, line: bytes, call_limit: MutableMapping[str, int]) -> None:
        """Parse, check and run one command line (aiosmtpd's checks, in its order)."""
        session = self.session
        assert session is not None
        if not line:
            await self.push("500 Error: bad syntax")
            return
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            await self.push("500 Error: bad syntax")
            return
        arg: str | None = None
        if arg_bytes:
            arg_bytes = arg_bytes.strip()
            if self.enable_SMTPUTF8:
                arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
            else:
                try:
                    arg = str(arg_bytes, encoding="ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push("500 Error: strict ASCII mode")
                    return
        max_size = (self.command_size_limits[command] if session.extended_smtp
                    else self.command_size_limit)
        if len(line) > max_size:
            await self.push("500 Command line too long")
            return
        if not self._tls_handshake_okay and command != "QUIT":
            await self.push("554 Command refused due to lack of security")
            return
        if self.require_starttls and not self._tls_protocol and command not in ALLOWED_BEFORE_STARTTLS:
            await self.push("530 Must issue a STARTTLS command first")  # RFC 3207 part 4
            return
        if self._enforce_call_limit:
            budget = call_limit[command]
            if budget < 1:
                mail_log.warning("%r over limit for %s", session.peer, command)
                await self.push(f"421 4.7.0 {command} sent too many times")
                assert self.transport is not None
                self.transport.close()
                return
            call_limit[command] = budget - 1
        method = self._smtp_methods.get(command)
        if method is None:
            await self._unknown_command(command)
            return
        self._reset_timeout()  # a valid command: the client is not idle
        await method(arg)

    async def _unknown_command(self, command: str) -> None:
        assert self.session is not None
        mail_log.warning("%r unrecognised: %s", self.session.peer, command)
        self._bogus_budget -= 1
        if self._bogus_budget < 1:
            mail_log.warning("%r too many bogus commands", self.session.peer)
            await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
            assert self.transport is not None
            self.transport.close()
            return
        await self.push(f'500 Error: command "{command}" not recognized')

    async def _answer_exception(self, error: Exception) -> None:
        """aiosmtpd's answer to an exception raised by a command: the handler's status (or 500)."""
        status = None
        try:
            status = await self.handle_exception(error)
        except Exception as inner_error:  # noqa: BLE001 - aiosmtpd's contract
            try:
                assert self.session is not None
                mail_log.exception("%r Exception in handle_exception()", self.session.peer)
                status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
            except Exception:  # noqa: BLE001
                status = "500 Error: Cannot describe error"
        finally:
            if isinstance(error, TLSSetupException):
                assert self.transport is not None
                self.transport.close()
                self.connection_lost(error)
            else:
                assert status is not None
                await self.push(status)

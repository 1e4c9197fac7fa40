"""aiosmtpd's SMTP protocol, subclassed only where the relay needs it.

aiosmtpd stays the server (command loop, parsing, STARTTLS, timeouts); the relay policy lives in
`relay.smtp.handler.RelayHandler`. We override:

* ``smtp_DATA``: aiosmtpd reads DATA line by line into memory (3-5x slower than bulk reads) and
  only then calls the handler; we read in bulk, frame with `DataFramer` and stream the content
  to the upstream as it arrives (with DATA, or as BDAT chunks: `relay.smtp.datasink`), so the
  client's final reply is the upstream's final reply (our 354 goes out without waiting for the
  upstream; an upstream refusal of DATA becomes the reply after the final dot, see
  `RelayHandler.open_data`);
* MAIL, RCPT, address parsing and ``push`` (enhanced status codes on aiosmtpd's built-in
  replies, the command budget): in the base class `relay.smtp.command_path.CommandPath`;
* ``_reset_timeout``/``_timeout_cb``: the idle timeout is a `relay.lazytimer.LazyDeadline` (moved
  per command, re-armed rarely) and must not close a client while *we* wait for the upstream;
* the command loop: `relay.smtp.commandloop.CommandLoop` (aiosmtpd's, with fewer steps per line);
* the client stream reader: a `relay.upstream.reader.LeanStreamReader` (asyncio's, with the plain
  read paths inline), fed by ``data_received`` without the weak-reference lookup;
* ``smtp_AUTH``: legacy devices send ``HELO`` then ``AUTH`` (aiosmtpd allows AUTH only after
  EHLO) and lower-case mechanism names; EHLO also advertises the pre-RFC ``AUTH=LOGIN PLAIN``
  line that some old clients look for instead of ``AUTH``;
* bare LF line ends (``listen.smtp.bare_lf``): ``normalize`` reads them as line ends in DATA
  (see `relay.smtp.dataframe.LineEndNormalizer`); ``reject`` answers ``521`` at once and closes,
  for commands as for DATA, as Postfix's ``smtpd_forbid_bare_newline`` does;
* ``connection_made``/``connection_lost``: TCP_NODELAY, and connection state that survives
  STARTTLS (aiosmtpd replaces its Session then) plus the end-of-session hook;
* session limits (the base class `relay.smtp.session_limits.SessionLimits`): the per-client
  connection cap (421 at connect), the login deadline (421 unless AUTH succeeded or a MAIL was
  accepted in time) and the budget of commands without progress (NOOP, RSET, HELP, VRFY, 4xx/5xx
  replies; reset by a successful AUTH or MAIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import TLSSetupException, syntax

from relay.config.model import BareLfMode
from relay.lazytimer import LazyDeadline
from relay.sessionlimits import ClientSlots, CommandBudget
from relay.smtp import replies
from relay.smtp.builtin_replies import with_old_style_auth
from relay.smtp.command_path import CommandPath
from relay.smtp.connection import ConnectionState
from relay.smtp.dataframe import DataFramer, LineEndNormalizer
from relay.smtp.fastinit import cheap_introspection
from relay.smtp.reply import SmtpReply
from relay.upstream.reader import LeanStreamReader
from relay.upstream.stream import set_nodelay

if TYPE_CHECKING:
    from relay.smtp.delivery import ContentSink

# ConnectionState is re-exported: the handler imports it from here.
__all__ = ["BARE_LF_REFUSED", "MAX_AUTH_LINE_OCTETS", "ConnectionState", "RelaySMTP"]

log = logging.getLogger("relay.smtp")

BARE_LF_REFUSED = "521 5.5.2 Error: bare <LF> received; end every line with <CR><LF>"

# An AUTH continuation line (RFC 4954 sets no limit; ours matches POP3's SASL line limit).
MAX_AUTH_LINE_OCTETS = 2048

class _Busy:
    """`RelaySMTP.busy`'s context manager (re-entrant: a counter)."""

    __slots__ = ("_server",)

    def __init__(self, server: RelaySMTP) -> None:
        self._server = server

    def __enter__(self) -> None:
        self._server._busy += 1

    def __exit__(self, *exc_info: object) -> None:
        server = self._server
        server._busy -= 1
        idle = server._idle  # server._reset_timeout(), one call less (several times per message)
        if idle is None:
            server._reset_timeout()
        else:
            idle.set(server._timeout_duration)


class RelaySMTP(CommandPath):
    """aiosmtpd's SMTP with bulk, streamed DATA (see the module docstring for each override)."""

    # The stream buffer limit: aiosmtpd uses it as the command-line limit too, but still refuses
    # command lines over 512 octets itself. A bigger buffer means fewer, larger DATA reads.
    line_length_limit = 32 * 1024

    def __init__(self, handler: Any, *, bare_lf: BareLfMode = "normalize", **kwargs: Any) -> None:
        with cheap_introspection():  # aiosmtpd's per-connection getmembers, see fastinit.py
            super().__init__(handler, **kwargs)
        # aiosmtpd's reader, as a LeanStreamReader fed directly by data_received (see there)
        reader = LeanStreamReader(limit=self.line_length_limit, loop=self.loop)
        self._stream_reader_wr = weakref.ref(reader)
        self._strong_reader = reader
        self._lean_reader: LeanStreamReader | None = reader
        self.bare_lf = bare_lf
        self.state = ConnectionState()
        self.closed = asyncio.Event()
        self._busy = 0
        self._busy_cm = _Busy(self)
        self._idle: LazyDeadline | None = None  # the client idle timeout (see _reset_timeout)
        self._started = False
        self._slots: ClientSlots | None = None
        self._slot: str | None = None
        self._refused = False
        self._budget: CommandBudget | None = None
        self._login_timeout_s = 0.0
        self._login_timer: asyncio.TimerHandle | None = None
        self._on_open: Callable[[RelaySMTP], None] | None = None

    # --- connection life cycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._started:  # not again for the TLS transport after STARTTLS
            self._started = True
            set_nodelay(transport.get_extra_info("socket"))
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                self.state.client_ip = str(peer[0])
                self.state.client_address = f"{peer[0]}:{peer[1]}"
            if not self._admit(transport):
                return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """StreamReaderProtocol's, without the weak-reference lookup per arrival."""
        reader = self._lean_reader
        if reader is not None:
            reader.feed_data(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if self._slots is not None and self._slot is not None:
            self._slots.release(self._slot)
            self._slot = None
        self._lean_reader = None  # StreamReaderProtocol forgets its reader too
        if self._refused:
            self.closed.set()
            self._break_cycles()
            return
        super().connection_lost(error)
        if not self.closed.is_set():
            self.closed.set()
            hook = getattr(self.event_handler, "connection_closed", None)
            if hook is not None:
                hook(self)
        task = self._handler_coroutine
        if task is None or task.done():
            self._break_cycles()
        else:  # cancelled above: it unwinds on the loop's next turns
            task.add_done_callback(self._break_cycles)

    def _break_cycles(self, _task: object = None) -> None:
        """Drop what points back at this session once its command loop has ended, so reference
        counting frees the closed session and its buffers at once instead of the cycle collector
        much later (bench/README.md, memory): aiosmtpd's command and AUTH tables and the stream
        callback are bound methods of the session, the stream writer and `_Busy` point at it, and
        the ended command loop's task keeps the exception (traceback: frames) that ended it.
        An idle timer re-armed while the loop unwound (`_Busy` on a cancelled upstream wait) goes
        too: it would keep the session for the idle timeout and then find no transport."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        self._handler_coroutine = None
        self._smtp_methods.clear()
        self._auth_methods.clear()
        self._client_connected_cb = None
        self.__dict__.pop("_writer", None)
        self.__dict__.pop("_busy_cm", None)

    def _cb_client_connected(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(reader, writer)
        if self.bare_lf == "reject":
            # aiosmtpd reads each command with reader.readuntil() and strips CRLF or LF alike:
            # only the reader still sees which line end came.
            strict_readuntil = reader.readuntil

            async def readuntil(separator: bytes = b"\n") -> bytes:
                line = await strict_readuntil(separator)
                if separator == b"\n" and not line.endswith(b"\r\n"):
                    await self.refuse_bare_lf("command")
                return line

            reader.readuntil = readuntil  # type: ignore[method-assign,assignment]

    async def refuse_bare_lf(self, where: str) -> None:
        """``listen.smtp.bare_lf: reject``: answer 521, close, end the session's command loop."""
        log.info("smtp %s: bare LF in a %s from %s: refused and closed (listen.smtp.bare_lf: "
                 "reject; set it to normalize to accept such clients)", self.state.session_id,
                 where, self.state.client_address)
        with contextlib.suppress(ConnectionError):
            await self.push(BARE_LF_REFUSED)
        self.close()
        raise ConnectionResetError(f"bare LF in a {where}: connection closed")

    @property
    def tls_active(self) -> bool:
        """True when this connection is encrypted (implicit TLS or after STARTTLS)."""
        transport = self.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    # --- timers -------------------------------------------------------------------------------

    def busy(self) -> _Busy:
        """While inside, the client idle timeout does not fire: we are waiting, not the client.

        A plain class, not @contextmanager: it is entered several times per SMTP command and a
        generator-based one costs a generator and four extra calls each time."""
        return self._busy_cm

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the client idle deadline. aiosmtpd arms a new timer (``call_later`` + ``cancel``)
        per command and per `busy` exit; a `LazyDeadline` moves a number and re-arms rarely."""
        idle = self._idle
        if idle is None:
            idle = self._idle = LazyDeadline(self.loop, self._timeout_cb)
            self._timeout_handle = idle  # type: ignore[assignment]  # aiosmtpd cancels it when lost
        idle.set(duration or self._timeout_duration)

    def _timeout_cb(self) -> None:
        if self._busy:
            self._reset_timeout()
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    # --- STARTTLS -----------------------------------------------------------------------------

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS; a failed handshake is the client's problem: one INFO line (no
        ERROR with a traceback from the handler's exception hook), and the connection closes."""
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as exc:
            log.info("smtp %s: TLS handshake with %s failed: %s", self.state.session_id,
                     self.state.client_address, exc.__cause__ or exc)
            # The TLS layer never reports this connection lost to us: close the socket and end
            # the session ourselves, or it would keep its connection slot forever.
            if self._original_transport is not None:
                self._original_transport.abort()  # type: ignore[attr-defined]
            if not self.closed.is_set():
                self.connection_lost(None)

    # --- AUTH ----------------------------------------------------------------------------------

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH, also after plain HELO (old devices) and with the mechanism name in
        any case (``AUTH login``)."""
        if arg:
            mechanism, space, rest = arg.lstrip().partition(" ")
            arg = mechanism.upper() + space + rest
        session = self.session
        if session is None or session.extended_smtp or not session.host_name:
            await super().smtp_AUTH(arg)
            return
        session.extended_smtp = True  # aiosmtpd's only objection to AUTH after HELO
        try:
            await super().smtp_AUTH(arg)
        finally:
            session.extended_smtp = False

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command == "EHLO" and args and isinstance(args[-1], list):
            args = (*args[:-1], with_old_style_auth(args[-1]))
        return await super()._call_handler_hook(command, *args)

    # --- AUTH helper --------------------------------------------------------------------------

    async def read_auth_line(self, challenge_b64: str) -> bytes:
        """Send ``334 challenge`` and return the client's response line without CRLF.

        Raises ValueError when the line is longer than MAX_AUTH_LINE_OCTETS (a PLAIN or LOGIN
        response is far shorter; a longer one is junk or a memory probe) or the stream buffer.
        """
        await self.push(replies.auth_challenge(challenge_b64).wire)
        line = await self._reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionResetError("client closed the connection during AUTH")
        if len(line) > MAX_AUTH_LINE_OCTETS:
            raise ValueError("AUTH response line too long")
        if self.bare_lf == "reject" and not line.endswith(b"\r\n"):
            await self.refuse_bare_lf("AUTH response")
        return line.rstrip(b"\r\n")

    # --- DATA ---------------------------------------------------------------------------------

    async def smtp_DATA(self, arg: str | None) -> None:
        session = self.session
        if (session is None or not session.host_name) and await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT.wire)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX.wire)
            return
        opened = await self.event_handler.open_data(self)
        if isinstance(opened, SmtpReply):  # refused
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(opened.wire)
            return
        sink: ContentSink = opened
        if self.send_reply(replies.START_DATA.wire):
            await self.after_reply(replies.START_DATA.wire)
        reader = self._reader
        framer = DataFramer(sink.max_bytes, lf_normalized=self.bare_lf == "normalize")
        line_ends = LineEndNormalizer()
        tail = b""
        try:
            while True:
                raw = await reader.read(2 * self.line_length_limit)  # in bulk: see _unread
                if not raw:
                    raise ConnectionResetError("client closed the connection during DATA")
                self._reset_timeout()
                chunk = line_ends.normalize(raw) if self.bare_lf == "normalize" else raw
                result = framer.feed(chunk)
                if self.bare_lf == "reject" and line_ends.has_bare_lf(
                        raw[:len(raw) - len(result.leftover)]):
                    sink.abandon()
                    await self.refuse_bare_lf("DATA line")
                if result.leftover:
                    self._unread(result.leftover)  # pipelined commands after the final dot
                if framer.done:
                    # The last chunk goes out with the terminating dot in one upstream write
                    # (one TLS record and send less per message; a 1 KB message is one chunk).
                    tail = result.forward
                    break
                if result.forward:
                    await sink.write(result.forward)
                elif not framer.ok:
                    sink.abandon()
        except BaseException:
            sink.abandon()  # client vanished mid-DATA: nothing may be delivered
            raise
        if line_ends.bare_lf_seen:
            log.info("smtp %s: %d bare LF line end(s) in DATA from %s read as CRLF "
                     "(listen.smtp.bare_lf: normalize)", self.state.session_id,
                     line_ends.bare_lf_seen, self.state.client_address)
        with self.busy():
            status = await sink.finish(framer, tail)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        if self.send_reply(status.wire):
            await self.after_reply(status.wire)

    def _unread(self, data: bytes) -> None:
        """Put bytes back at the front of the reader, for aiosmtpd's command loop. (DATA is read
        in bulk: reading line by line cannot wait for a ``CRLF.CRLF`` that a bare-LF client never
        sends, and copies each byte twice.)

        Nothing was awaited since the read that returned them, so the buffer holds only what
        arrived after them. asyncio.StreamReader has no public unread; aiosmtpd itself clears
        the same ``_buffer`` after STARTTLS.
        """
        self._reader._buffer[:0] = data  # type: ignore[attr-defined]

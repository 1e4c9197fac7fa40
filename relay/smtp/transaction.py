"""The SMTP relay transaction as a pure state machine: client events in, commands out.

No asyncio and no sockets here (the h11 / mitmproxy shape): `RelayTransaction` decides what the
upstream is asked and what the client hears; `relay.smtp.forward.LiveSmtpDelivery` executes the
commands against a real upstream session and feeds their outcome back. Every policy of live
forwarding lives here and is unit-tested as a transcript (tests/unit/test_smtp_transaction.py):

* **Delayed sender verdict** (like Postfix's ``smtpd_delay_reject``): when the upstream pipelines,
  MAIL is checked and answered locally (`SENDER_OK`) and goes upstream in one write with the
  first RCPT; an upstream refusal of MAIL is then the reply to every RCPT of the transaction.
* **Retry once**: a kept or pooled session can die while idle or lose its login; when MAIL on
  such a *reused* session fails with a connection failure or 421/530/535, the session is dropped
  and the MAIL (with its RCPT) goes once more on a fresh one, so the client never sees it.
* **Pool return rules**: a session goes back (`Release`) only when no upstream transaction is
  open; one whose state is unknown (a failure, 421, an RSET that was not 250, a pipelined RCPT
  accepted after a refused MAIL) is dropped, never lent again.
* **Loss and refusal at every step** end in a 4xx (never 250 for what the upstream did not
  accept) and, for a failure mid-transaction, 4xx to every command until RSET or the next MAIL.

The driver: each call returns a list of commands (`relay.smtp.events`); all but the last are
done at once (`Drop`, `Release`, `Quit`); the last is either `Answer` (the client's reply, the
step is over) or a request whose outcome (`SessionReady`, `Replied`, `Failed`) goes to `handle`,
which again returns commands.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from relay.errors import ProtocolInputError, UpstreamBusy, UpstreamUnavailable
from relay.smtp import replies
from relay.smtp.commandline import mail_command, rcpt_command
from relay.smtp.events import (
    DROP,
    QUIT,
    RELEASE,
    SEND_RSET,
    Acquire,
    Answer,
    Command,
    ContentResult,
    Drop,
    Failed,
    MailRequest,
    Outcome,
    Quit,
    Release,
    Replied,
    SendMail,
    SendRcpt,
    SendRset,
    SessionInfo,
    SessionReady,
    StartContent,
)
from relay.smtp.failures import client_reply_for_upstream, reply_for_error
from relay.smtp.reply import EhloCapabilities, SmtpReply

__all__ = [
    "LOGGED_OUT",
    "Acquire",
    "Answer",
    "Command",
    "ContentResult",
    "Drop",
    "Failed",
    "MailRequest",
    "Outcome",
    "Phase",
    "Quit",
    "RelayTransaction",
    "Release",
    "Replied",
    "SendMail",
    "SendRcpt",
    "SendRset",
    "SessionInfo",
    "SessionReady",
    "StartContent",
]

LOGGED_OUT = frozenset({421, 530, 535})
_SENDER_OK, _OK, _BYE = Answer(replies.SENDER_OK), Answer(replies.OK), Answer(replies.BYE)
"""MAIL replies of a reused session that lost its login (or is closing): retry on a fresh one."""


class Phase(enum.Enum):
    """Where the client's transaction is."""

    IDLE = "idle"  # no transaction (a kept session may be held)
    HELD = "held"  # MAIL answered locally, goes upstream with the first RCPT
    REFUSED = "refused"  # the upstream refused the held MAIL: that refusal answers every RCPT
    OPEN = "open"  # MAIL accepted upstream: RCPTs, then the content
    CONTENT = "content"  # the content is on its way upstream
    BROKEN = "broken"  # the upstream failed mid-transaction: 4xx until RSET or MAIL


class _Step(enum.Enum):
    """What outcome `handle` is waiting for."""

    NONE = 0
    SESSION = 1
    RSET_BEFORE_MAIL = 2
    MAIL = 3
    RCPT = 4
    RSET = 5


class RelayTransaction:
    """One client connection's relay transactions over one account's upstream (see module doc)."""

    def __init__(self, *, max_message_bytes: int, pooled: bool) -> None:
        self.max_message_bytes = max_message_bytes
        self.pooled = pooled
        self.phase = Phase.IDLE
        self.session: SessionInfo | None = None  # the held session
        self.upstream_open = False  # the upstream holds a transaction (MAIL accepted, no end)
        self.refusal: SmtpReply | None = None  # Phase.REFUSED: every RCPT's reply
        self.last_upstream_reply: SmtpReply | None = None
        self._step = _Step.NONE
        self._mail: MailRequest | None = None
        self._mail_line = b""  # the MAIL being sent (HELD: not yet)
        self._rcpt_line: bytes | None = None  # the first RCPT going with a held MAIL
        self._retries_left = 0  # fresh-session retries left for this MAIL (0 or 1)
        self._retry = False  # a failure of this MAIL on its session may be retried
        self._kept_attempt = False  # the session attempt started from a kept session
        self._send_now = False  # a retried MAIL goes at once, never held again

    # --- client events ------------------------------------------------------------------------

    def size_limit(self) -> int:
        """The SIZE to advertise and enforce: ours, or the held upstream's if lower."""
        if self.session is None:
            return self.max_message_bytes
        return self.session.capabilities.effective_size_limit(self.max_message_bytes)

    def mail(self, request: MailRequest, *, session_alive: bool) -> list[Command]:
        """MAIL: get a session (the held one if alive), check the options, then answer at once
        (pipelining: held) or send MAIL now."""
        self.phase, self.refusal, self._mail = Phase.IDLE, None, request
        self._retries_left, self._retry, self._send_now, self._rcpt_line = 1, False, False, None
        out: list[Command] = []
        if self.session is not None and session_alive:
            self._kept_attempt = True
            if self.upstream_open:
                self._step = _Step.RSET_BEFORE_MAIL
                return [SEND_RSET]
            return self._session_ready(self.session, reused=True)
        self._kept_attempt = self.session is not None
        if self.session is not None:
            out.append(self._drop())
        self._step = _Step.SESSION
        out.append(Acquire(fresh=False))
        return out

    def rcpt(self, address: str) -> list[Command]:
        """RCPT: the held MAIL's refusal, or the upstream's reply for this recipient."""
        if address == "<>":
            return [Answer(replies.NULL_RECIPIENT)]
        if self.phase is Phase.REFUSED:
            assert self.refusal is not None
            return [Answer(self.refusal)]
        try:
            line = rcpt_command(address)
        except ProtocolInputError as exc:
            return [Answer(replies.syntax_error(exc))]
        if self.phase is Phase.HELD:
            self._rcpt_line = line
            return self._send_mail()
        if self.phase is not Phase.OPEN or self.session is None:
            return [Answer(replies.UPSTREAM_CONNECTION_LOST)]
        self._step = _Step.RCPT
        return [SendRcpt(line)]

    def data(self) -> list[Command]:
        """DATA (or the content's start): the content path, or 4xx when the upstream is gone."""
        if self.phase is not Phase.OPEN or self.session is None:
            return [Answer(replies.UPSTREAM_CONNECTION_LOST)]
        self.phase = Phase.CONTENT
        return [StartContent(self.session.chunking)]

    def content_done(self, result: ContentResult) -> list[Command]:
        """The content ended (see `ContentResult`): the client's final reply, pool rules."""
        self.phase = Phase.IDLE
        out: list[Command] = []
        if result.error is not None:
            self.phase = Phase.BROKEN
            return [*self._drop_list(), Answer(reply_for_error(result.error, connected=True),
                                               failure=result.error)]
        if result.refused is not None:  # ours: the sink abandoned the upstream transaction
            return [*self._drop_list(), Answer(result.refused)]
        reply = result.reply
        assert reply is not None
        self.last_upstream_reply = reply
        self.upstream_open = result.open_after
        answer = Answer(client_reply_for_upstream(reply))
        if reply.code == 421:
            out.extend(self._drop_list())
        elif not self.pooled:
            return [answer]  # the usual end: the kept session stays
        out.extend(self._release_if_clean())
        out.append(answer)
        return out

    def reset(self) -> list[Command]:
        """RSET, HELO/EHLO: forget the client's transaction; RSET upstream when one is open."""
        self.phase, self.refusal, self._mail = Phase.IDLE, None, None
        if self.session is not None and self.upstream_open:
            self._step = _Step.RSET
            return [SEND_RSET]
        return [*self._release_if_clean(), _OK]

    def quit(self) -> list[Command]:
        """QUIT: pooling, the session goes back (after RSET if needed); else it is closed politely."""
        if self.pooled:
            return self.reset()
        self.phase = Phase.IDLE
        if self.session is None:
            return [_BYE]
        self.session, self.upstream_open = None, False
        return [QUIT, _BYE]

    def connection_lost(self) -> list[Command]:
        """The client is gone: a clean session goes back to the pool, any other is dropped."""
        self.phase = Phase.IDLE
        out = self._release_if_clean()
        return out or self._drop_list()

    # --- outcomes -----------------------------------------------------------------------------

    def handle(self, outcome: Outcome) -> list[Command]:
        """The outcome of the last request command; returns the next commands."""
        step, self._step = self._step, _Step.NONE
        if step is _Step.SESSION:
            if isinstance(outcome, SessionReady):
                self.session = outcome.info
                return self._session_ready(outcome.info, reused=outcome.info.reused)
            return self._session_failed(outcome)
        if step is _Step.RSET_BEFORE_MAIL:
            if isinstance(outcome, Replied):
                self.upstream_open = False
                assert self.session is not None
                return self._session_ready(self.session, reused=True)
            return self._session_failed(outcome)
        if step is _Step.MAIL:
            return self._mail_outcome(outcome)
        if step is _Step.RCPT:
            return self._rcpt_outcome(outcome)
        if step is _Step.RSET:
            return self._rset_outcome(outcome)
        raise AssertionError(f"no outcome expected ({outcome!r})")

    # --- MAIL ---------------------------------------------------------------------------------

    def _session_ready(self, info: SessionInfo, *, reused: bool) -> list[Command]:
        """A session for this MAIL: check it against the options, then hold or send MAIL."""
        request = self._mail
        assert request is not None
        self._retry = self._retries_left > 0 and reused
        options = request.options
        refusal = self._check_options(info.capabilities, options) if options else None
        if refusal is None:
            try:
                self._mail_line = mail_command(
                    request.sender, _mail_params(info.capabilities, options) if options else ())
            except ProtocolInputError as exc:
                refusal = replies.syntax_error(exc)
        if refusal is not None:
            return [*self._release_if_clean(), Answer(refusal)]
        if info.pipelining and not self._send_now:
            self.phase = Phase.HELD
            return [_SENDER_OK]
        return self._send_mail()

    def _session_failed(self, outcome: Outcome) -> list[Command]:
        assert isinstance(outcome, Failed)
        out = self._drop_list()
        if self._kept_attempt and self._retries_left and _died_while_idle(outcome.error):
            self._retries_left, self._kept_attempt = 0, False
            self._step = _Step.SESSION
            return [*out, Acquire(fresh=True)]
        answer = Answer(reply_for_error(outcome.error), failure=outcome.error)
        return self._mail_final(answer, self._rcpt_line is not None, out)

    def _check_options(self, caps: EhloCapabilities, options: Mapping[str, str]) -> SmtpReply | None:
        declared = options.get("SIZE")
        if declared and int(declared) > caps.effective_size_limit(self.max_message_bytes):
            return replies.TOO_BIG
        if "SMTPUTF8" in options and not caps.smtputf8:
            return replies.SMTPUTF8_UNSUPPORTED
        if options.get("BODY") == "8BITMIME" and not caps.eight_bit_mime:
            return replies.EIGHTBITMIME_UNSUPPORTED
        return None

    def _send_mail(self) -> list[Command]:
        self._step = _Step.MAIL
        self.upstream_open = True  # from here on the upstream may hold an open transaction
        return [SendMail(self._mail_line, self._rcpt_line)]

    def _mail_outcome(self, outcome: Outcome) -> list[Command]:
        held = self._rcpt_line is not None
        if not isinstance(outcome, Replied):
            assert isinstance(outcome, Failed)
            out = self._drop_list()
            if self._retry and _died_while_idle(outcome.error):
                return [*out, *self._retry_fresh()]
            return self._mail_final(Answer(reply_for_error(outcome.error), failure=outcome.error),
                                    held, out)
        mail = outcome.first
        self.upstream_open = mail.is_positive
        if self._retry and mail.code in LOGGED_OUT:
            return [*self._drop_list(), *self._retry_fresh()]
        self.last_upstream_reply = mail
        if mail.is_positive:
            self.phase = Phase.OPEN
            self._rcpt_line = None
            if held:
                assert outcome.second is not None
                self.last_upstream_reply = outcome.second
                return [Answer(client_reply_for_upstream(outcome.second))]
            return [Answer(client_reply_for_upstream(mail))]
        # Refused: no transaction is open. Keep the session unless it closed (421, no RCPT reply
        # came) or accepted the pipelined RCPT anyway (its state is unknown).
        unknown = mail.code == 421 or not outcome.connected or (
            outcome.second is not None and outcome.second.is_positive)
        self.phase = Phase.IDLE
        out = self._drop_list() if unknown else self._release_if_clean()
        return self._mail_final(Answer(client_reply_for_upstream(mail)), held, out)

    def _mail_final(self, answer: Answer, held: bool, out: list[Command]) -> list[Command]:
        """MAIL ended without a transaction: a held MAIL's answer becomes every RCPT's."""
        self._rcpt_line = None
        if held:
            self.phase, self.refusal = Phase.REFUSED, answer.reply
        else:
            self.phase = Phase.IDLE
        return [*out, answer]

    def _retry_fresh(self) -> list[Command]:
        """Once: the reused session died or lost its login; the same MAIL on a fresh one."""
        self._retries_left, self._retry, self._kept_attempt = 0, False, False
        self._send_now = True
        self._step = _Step.SESSION
        return [Acquire(fresh=True)]

    # --- RCPT and RSET ------------------------------------------------------------------------

    def _rcpt_outcome(self, outcome: Outcome) -> list[Command]:
        if not isinstance(outcome, Replied):
            assert isinstance(outcome, Failed)
            self.phase = Phase.BROKEN
            return [*self._drop_list(), Answer(reply_for_error(outcome.error, connected=True),
                                               failure=outcome.error)]
        self.last_upstream_reply = outcome.first
        return [Answer(client_reply_for_upstream(outcome.first))]

    def _rset_outcome(self, outcome: Outcome) -> list[Command]:
        if not isinstance(outcome, Replied):
            return [*self._drop_list(), _OK]
        self.upstream_open = False
        if outcome.first.code != 250 and self.pooled:
            return [*self._drop_list(), _OK]  # not known to be clean: never pooled
        return [*self._release_if_clean(), _OK]

    # --- the held session ---------------------------------------------------------------------

    def _drop(self) -> Drop:
        self.session, self.upstream_open = None, False
        return DROP

    def _drop_list(self) -> list[Command]:
        return [self._drop()] if self.session is not None else []

    def _release_if_clean(self) -> list[Command]:
        """Pooling: give the session back when no transaction is open here or upstream."""
        if (self.pooled and self.session is not None and not self.upstream_open
                and self.phase is not Phase.HELD):
            self.session = None
            return [RELEASE]
        return []


def _died_while_idle(exc: BaseException) -> bool:
    """A failure that on a reused session means it died while idle: one fresh try is safe."""
    return isinstance(exc, UpstreamUnavailable) and not isinstance(exc, UpstreamBusy)


def _mail_params(caps: EhloCapabilities, options: Mapping[str, str]) -> list[str]:
    """The client's MAIL parameters the upstream understands."""
    params = []
    if "SIZE" in options and caps.size is not None:
        params.append(f"SIZE={options['SIZE']}")
    if "BODY" in options and caps.eight_bit_mime:
        params.append(f"BODY={options['BODY']}")
    if "SMTPUTF8" in options:
        params.append("SMTPUTF8")
    return params

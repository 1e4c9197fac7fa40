"""The SMTP relay-transaction core without sockets: transcripts of client line, what the upstream
was asked (and answered), and the client's reply."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from relay.errors import UpstreamAuthRejected, UpstreamBusy, UpstreamUnavailable
from relay.smtp.reply import EhloCapabilities, parse_reply
from relay.smtp.transaction import (
    Acquire,
    Answer,
    Command,
    ContentResult,
    Drop,
    Failed,
    MailRequest,
    Outcome,
    Phase,
    Quit,
    RelayTransaction,
    Release,
    Replied,
    SendMail,
    SendRcpt,
    SendRset,
    SessionInfo,
    SessionReady,
    StartContent,
)

CAPS = EhloCapabilities(size=0, eight_bit_mime=True, smtputf8=True, pipelining=True, chunking=True)
PIPELINING = SessionInfo(CAPS, pipelining=True, chunking=False, reused=False)
CHUNKING = SessionInfo(CAPS, pipelining=True, chunking=True, reused=False)
CLASSIC = SessionInfo(EhloCapabilities(size=1000), pipelining=False, chunking=False, reused=False)
POOLED_REUSED = SessionInfo(CAPS, pipelining=True, chunking=True, reused=True)
DEAD = UpstreamUnavailable("upstream closed the connection")


@dataclass
class Relay:
    """Drives a RelayTransaction like LiveSmtpDelivery does, with a scripted upstream."""

    pooled: bool = False
    core: RelayTransaction = field(init=False)
    script: deque[object] = field(default_factory=deque)
    asked: list[str] = field(default_factory=list)  # every upstream action, in order
    alive: bool = True  # what the held session's connection looks like

    def __post_init__(self) -> None:
        self.core = RelayTransaction(max_message_bytes=10_000, pooled=self.pooled)

    def say(self, line: str, *upstream: object, content: ContentResult | None = None) -> str:
        """One client line; ``upstream`` answers the requests it causes, in order. Returns the
        client's reply on one line ("" when the core gave none, e.g. connection lost)."""
        self.script.extend(upstream)
        verb, _, arg = line.partition(" ")
        address = arg.partition(":")[2].strip("<>") if ":" in arg else ""
        if verb == "MAIL":
            commands = self.core.mail(MailRequest(address, {}), session_alive=self.alive)
        elif verb == "RCPT":
            commands = self.core.rcpt(address or "<>")
        elif verb == "DATA":
            commands = self.core.data()
        elif verb == ".":
            assert content is not None
            commands = self.core.content_done(content)
        elif verb == "RSET":
            commands = self.core.reset()
        elif verb == "QUIT":
            commands = self.core.quit()
        elif verb == "LOST":
            commands = self.core.connection_lost()
        else:
            raise AssertionError(line)
        reply = self._run(commands)
        assert not self.script, f"upstream answers left over: {list(self.script)}"
        return reply

    def _run(self, commands: list[Command]) -> str:
        while commands:
            *now, last = commands
            for command in now:
                self.asked.append(_name(command))
            if isinstance(last, Answer):
                return last.reply.one_line()
            if isinstance(last, Drop | Release | Quit):
                self.asked.append(_name(last))
                return ""
            self.asked.append(_name(last))
            if isinstance(last, StartContent):
                return "354"
            commands = self.core.handle(self._outcome(self.script.popleft()))
        return ""

    @staticmethod
    def _outcome(answer: object) -> Outcome:
        if isinstance(answer, SessionInfo):
            return SessionReady(answer)
        if isinstance(answer, BaseException):
            return Failed(answer)
        if isinstance(answer, tuple):
            first, second = answer
            return Replied(_reply(first), _reply(second) if second else None,
                           connected=not first.startswith("421") and second is not None)
        assert isinstance(answer, str)
        return Replied(_reply(answer))

    def took(self) -> list[str]:
        """The upstream actions since the last call."""
        asked, self.asked = self.asked, []
        return asked


def _reply(text: str):  # type: ignore[no-untyped-def]
    return parse_reply(text.encode() + b"\r\n")


def _name(command: Command) -> str:
    if isinstance(command, Acquire):
        return "acquire fresh" if command.fresh else "acquire"
    if isinstance(command, SendMail):
        return "MAIL+RCPT" if command.rcpt is not None else "MAIL"
    if isinstance(command, StartContent):
        return "BDAT" if command.chunking else "DATA"
    return {SendRcpt: "RCPT", SendRset: "RSET", Drop: "drop", Release: "release",
            Quit: "quit"}[type(command)]


def accepted(reply: str = "250 2.0.0 queued") -> ContentResult:
    return ContentResult(reply=_reply(reply))


def open_transaction(relay: Relay, session: SessionInfo = PIPELINING) -> None:
    """MAIL (held) and an accepted first RCPT on a new session."""
    assert relay.say("MAIL FROM:<a@x>", session) == "250 2.1.0 Sender OK"
    assert relay.say("RCPT TO:<b@y>", ("250 2.1.0 ok", "250 2.1.5 ok")) == "250 2.1.5 ok"
    relay.took()


# --- delayed MAIL ---------------------------------------------------------------------------------

def test_delayed_mail_goes_with_the_first_rcpt_and_the_message_by_bdat() -> None:
    """MAIL is answered locally; MAIL+RCPT go in one write; later RCPTs alone; BDAT with CHUNKING;
    the kept session stays for the next message (no pool)."""
    relay = Relay()
    assert relay.say("MAIL FROM:<a@x>", CHUNKING) == "250 2.1.0 Sender OK"
    assert relay.took() == ["acquire"]
    assert relay.say("RCPT TO:<b@y>", ("250 2.1.0 ok", "250 2.1.5 b ok")) == "250 2.1.5 b ok"
    assert relay.say("RCPT TO:<c@y>", "550 5.1.1 c unknown") == "550 5.1.1 c unknown"
    assert relay.took() == ["MAIL+RCPT", "RCPT"]
    assert relay.say("DATA") == "354"
    assert relay.say(".", content=accepted()) == "250 2.0.0 queued"
    assert relay.took() == ["BDAT"]
    assert relay.say("MAIL FROM:<a@x>") == "250 2.1.0 Sender OK"
    assert relay.took() == []  # the kept session, no round trip


@pytest.mark.parametrize(("mail", "rcpt", "client", "after"), [
    ("550 5.7.60 SendAsDenied", "503 5.5.1 need MAIL", "550 5.7.60 SendAsDenied", []),
    ("421 4.3.2 going down", None, "451 4.3.2 going down", ["drop"]),
    ("550 5.7.1 no", "250 2.1.5 ok", "550 5.7.1 no", ["drop"]),  # RCPT accepted anyway: unknown
], ids=["refused", "421-closing", "rcpt-accepted-anyway"])
def test_refused_delayed_mail_answers_every_rcpt_without_asking_again(mail, rcpt, client, after) -> None:
    """The upstream's refusal of the held MAIL is every RCPT's reply (421 as 451); the session is
    kept when clean, dropped when closing or in an unknown state."""
    relay = Relay()
    relay.say("MAIL FROM:<a@x>", PIPELINING)
    relay.took()
    assert relay.say("RCPT TO:<b@y>", (mail, rcpt)) == client
    assert relay.took() == ["MAIL+RCPT", *after]
    assert relay.say("RCPT TO:<c@y>") == client
    assert relay.say("DATA") == "451 4.4.2 Connection to the upstream mail server failed"
    assert relay.say("RSET") == "250 2.0.0 OK"
    assert relay.took() == []  # nothing open upstream: no RSET
    assert relay.core.phase is Phase.IDLE


def test_classic_upstream_gets_mail_at_once_and_data() -> None:
    """Without PIPELINING, MAIL goes upstream at once and its reply is the client's; DATA path."""
    relay = Relay()
    assert relay.say("MAIL FROM:<a@x>", CLASSIC, "250 2.1.0 ok") == "250 2.1.0 ok"
    assert relay.took() == ["acquire", "MAIL"]
    assert relay.say("RCPT TO:<b@y>", "250 2.1.5 ok") == "250 2.1.5 ok"
    assert relay.say("DATA") == "354"
    assert relay.took() == ["RCPT", "DATA"]


def test_classic_mail_refused_is_the_mail_reply() -> None:
    """Without PIPELINING a refused MAIL is answered to MAIL itself; the session is kept."""
    relay = Relay()
    assert relay.say("MAIL FROM:<a@x>", CLASSIC, "553 5.1.8 bad sender") == "553 5.1.8 bad sender"
    assert relay.core.phase is Phase.IDLE and relay.core.session is not None


def test_mail_options_the_upstream_cannot_carry_are_refused_locally() -> None:
    """SIZE over the upstream's limit, SMTPUTF8 or 8BITMIME it lacks: refused before MAIL goes."""
    relay = Relay()
    commands = relay.core.mail(MailRequest("a@x", {"SIZE": "5000"}), session_alive=False)
    assert isinstance(commands[-1], Acquire)
    [answer] = relay.core.handle(SessionReady(CLASSIC))
    assert isinstance(answer, Answer) and answer.reply.one_line().startswith("552 5.3.4")
    [answer] = relay.core.mail(MailRequest("a@x", {"SMTPUTF8": ""}), session_alive=True)
    assert isinstance(answer, Answer) and answer.reply.code == 555


# --- retry once -----------------------------------------------------------------------------------

def test_kept_session_dead_at_the_first_rcpt_is_retried_once_on_a_fresh_one() -> None:
    """The kept session died while idle: MAIL+RCPT fail, the core drops it and sends them again on a
    fresh session; the client only sees the RCPT's 250."""
    relay = Relay()
    open_transaction(relay)
    relay.say(".", content=accepted())
    assert relay.say("MAIL FROM:<a@x>") == "250 2.1.0 Sender OK"
    assert relay.say("RCPT TO:<b@y>", DEAD, PIPELINING, ("250 2.1.0 ok", "250 2.1.5 ok")) \
        == "250 2.1.5 ok"
    assert relay.took() == ["MAIL+RCPT", "drop", "acquire fresh", "MAIL+RCPT"]


def test_retry_happens_only_once() -> None:
    """A fresh session that fails as well: 451 to this RCPT and to every later one."""
    relay = Relay()
    open_transaction(relay)
    relay.say(".", content=accepted())
    relay.say("MAIL FROM:<a@x>")
    assert relay.say("RCPT TO:<b@y>", DEAD, PIPELINING, DEAD).startswith("451 4.4.1")
    assert relay.took() == ["MAIL+RCPT", "drop", "acquire fresh", "MAIL+RCPT", "drop"]
    assert relay.say("RCPT TO:<c@y>").startswith("451 4.4.1")
    assert relay.took() == []


@pytest.mark.parametrize("code", ["421 4.4.2 idle timeout", "530 5.7.0 Authentication required",
                                  "535 5.7.3 token expired"])
def test_logged_out_reused_session_is_replaced(code) -> None:
    """421/530/535 to MAIL on a reused session: the login expired; a fresh session, same MAIL."""
    relay = Relay()
    open_transaction(relay)
    relay.say(".", content=accepted())
    relay.say("MAIL FROM:<a@x>")
    assert relay.say("RCPT TO:<b@y>", (code, None), CLASSIC, ("250 2.1.0 ok", "250 2.1.5 ok")) \
        == "250 2.1.5 ok"
    assert relay.took() == ["MAIL+RCPT", "drop", "acquire fresh", "MAIL+RCPT"]


def test_fresh_session_is_not_retried() -> None:
    """A session opened for this MAIL that fails: no retry, 451 (every RCPT of the transaction)."""
    relay = Relay()
    relay.say("MAIL FROM:<a@x>", PIPELINING)
    assert relay.say("RCPT TO:<b@y>", DEAD).startswith("451 4.4.1")
    assert relay.say("RCPT TO:<c@y>").startswith("451 4.4.1")
    assert relay.took() == ["acquire", "MAIL+RCPT", "drop"]


def test_pooled_reused_session_is_retried_and_busy_pool_is_not() -> None:
    """A session the pool lent again counts as reused (retry); a busy pool is not a dead session."""
    relay = Relay(pooled=True)
    relay.say("MAIL FROM:<a@x>", POOLED_REUSED)
    assert relay.say("RCPT TO:<b@y>", DEAD, CHUNKING, ("250 2.1.0 ok", "250 2.1.5 ok")) == "250 2.1.5 ok"
    relay.took()
    relay = Relay(pooled=True)
    assert relay.say("MAIL FROM:<a@x>", UpstreamBusy("all busy")).startswith("451 4.3.2")


def test_kept_session_that_looks_dead_at_mail_is_replaced_and_retried_once() -> None:
    """The kept session's connection is closed at MAIL: drop it, acquire; a connect failure then
    gets one fresh retry (the first attempt started from a kept session)."""
    relay = Relay()
    open_transaction(relay)
    relay.say(".", content=accepted())
    relay.alive = False
    assert relay.say("MAIL FROM:<a@x>", DEAD, PIPELINING) == "250 2.1.0 Sender OK"
    assert relay.took() == ["drop", "acquire", "acquire fresh"]


# --- upstream loss at each step -------------------------------------------------------------------

@pytest.mark.parametrize(("error", "reply"), [
    (DEAD, "451 4.4.1"),
    (UpstreamAuthRejected("535 refused twice"), "454 4.7.0"),
    (UpstreamBusy("cap"), "451 4.3.2"),
])
def test_no_session_at_mail_is_a_4xx_with_the_failure_logged(error, reply) -> None:
    """Connect, login or pool failure at MAIL: a 4xx (never 5xx) carrying the failure to log."""
    relay = Relay()
    commands = relay.core.mail(MailRequest("a@x", {}), session_alive=False)
    [answer] = relay.core.handle(Failed(error))
    assert isinstance(commands[-1], Acquire) and isinstance(answer, Answer)
    assert answer.reply.one_line().startswith(reply) and answer.failure is error


def test_loss_at_a_later_rcpt_breaks_the_transaction_until_rset() -> None:
    """The upstream dies at the second RCPT: 451 4.4.2, then every RCPT and DATA 451 without
    asking; RSET clears it and the next MAIL opens a new session."""
    relay = Relay()
    open_transaction(relay)
    assert relay.say("RCPT TO:<c@y>", DEAD).startswith("451 4.4.2")
    assert relay.took() == ["RCPT", "drop"]
    assert relay.say("RCPT TO:<d@y>").startswith("451 4.4.2")
    assert relay.say("DATA").startswith("451 4.4.2")
    assert relay.say("RSET") == "250 2.0.0 OK"
    assert relay.say("MAIL FROM:<a@x>", PIPELINING) == "250 2.1.0 Sender OK"
    assert relay.took() == ["acquire"]


def test_loss_during_the_content_is_a_4xx_and_the_session_dropped() -> None:
    """The transfer fails: 451 4.4.2 to the final dot, the session is dropped."""
    relay = Relay()
    open_transaction(relay)
    relay.say("DATA")
    reply = relay.say(".", content=ContentResult(error=DEAD))
    assert reply.startswith("451 4.4.2") and relay.took() == ["DATA", "drop"]
    assert relay.core.phase is Phase.BROKEN


def test_our_refusal_of_the_content_drops_the_abandoned_session() -> None:
    """Size/line/bare-LF refusal: the sink abandoned the upstream; our reply; session dropped."""
    relay = Relay()
    open_transaction(relay)
    relay.say("DATA")
    too_big = _reply("552 5.3.4 too big")
    assert relay.say(".", content=ContentResult(refused=too_big)) == "552 5.3.4 too big"
    assert relay.took() == ["DATA", "drop"]


# --- pool return rules ----------------------------------------------------------------------------

def test_pool_gets_the_session_back_after_the_final_reply() -> None:
    """Accepted or refused after the dot: the transaction is over, the session goes back."""
    relay = Relay(pooled=True)
    open_transaction(relay, CHUNKING)
    relay.say("DATA")
    assert relay.say(".", content=accepted()) == "250 2.0.0 queued"
    assert relay.took() == ["BDAT", "release"]


def test_pool_waits_for_rset_after_a_refused_data_or_last() -> None:
    """A refusal of DATA (or of BDAT LAST) leaves the upstream transaction open: no release until
    an RSET answered 250; an RSET answered otherwise drops the session."""
    relay = Relay(pooled=True)
    open_transaction(relay)
    relay.say("DATA")
    refused = ContentResult(reply=_reply("554 5.6.0 refused"), open_after=True)
    assert relay.say(".", content=refused) == "554 5.6.0 refused"
    assert relay.took() == ["DATA"]
    assert relay.say("RSET", "250 2.0.0 ok") == "250 2.0.0 OK"
    assert relay.took() == ["RSET", "release"]
    relay = Relay(pooled=True)
    open_transaction(relay)
    relay.say("DATA")
    relay.say(".", content=refused)
    assert relay.say("RSET", "500 5.5.1 what") == "250 2.0.0 OK"
    assert relay.took() == ["DATA", "RSET", "drop"]


def test_pool_gets_a_clean_session_back_when_the_client_leaves() -> None:
    """Client gone with only a held MAIL (never sent): the session is clean, it goes back; gone
    mid-transaction: dropped."""
    relay = Relay(pooled=True)
    relay.say("MAIL FROM:<a@x>", PIPELINING)
    relay.say("LOST")
    assert relay.took() == ["acquire", "release"]
    relay = Relay(pooled=True)
    open_transaction(relay)
    relay.say("LOST")
    assert relay.took() == ["drop"]


def test_pool_gets_the_session_back_after_a_clean_mail_refusal() -> None:
    """A refused MAIL opens no transaction: the session goes back at once."""
    relay = Relay(pooled=True)
    relay.say("MAIL FROM:<a@x>", PIPELINING)
    assert relay.say("RCPT TO:<b@y>", ("550 5.7.60 denied", "503 5.5.1 no")) == "550 5.7.60 denied"
    assert relay.took() == ["acquire", "MAIL+RCPT", "release"]


def test_kept_session_with_an_open_transaction_gets_rset_before_the_next_mail() -> None:
    """No pool, a refused DATA left the upstream transaction open: the next MAIL sends RSET first."""
    relay = Relay()
    open_transaction(relay)
    relay.say("DATA")
    relay.say(".", content=ContentResult(reply=_reply("451 4.3.0 later"), open_after=True))
    relay.took()
    assert relay.say("MAIL FROM:<a@x>", "250 2.0.0 reset") == "250 2.1.0 Sender OK"
    assert relay.took() == ["RSET"]


# --- RSET and QUIT in every state -----------------------------------------------------------------

def _to_state(relay: Relay, state: str) -> None:
    if state == "no session":
        return
    if state == "held":
        relay.say("MAIL FROM:<a@x>", PIPELINING)
    elif state == "refused":
        relay.say("MAIL FROM:<a@x>", PIPELINING)
        relay.say("RCPT TO:<b@y>", ("550 5.7.1 no", "503 5.5.1 no"))
    elif state == "open":
        open_transaction(relay)
    elif state == "broken":
        open_transaction(relay)
        relay.say("RCPT TO:<c@y>", DEAD)
    elif state == "idle kept":
        open_transaction(relay)
        relay.say(".", content=accepted())
    relay.took()


RSET_CASES: Iterable[tuple[str, bool, list[object], list[str]]] = [
    ("no session", False, [], []),
    ("idle kept", False, [], []),
    ("held", False, [], []),
    ("refused", False, [], []),
    ("open", False, ["250 2.0.0 ok"], ["RSET"]),
    ("broken", False, [], []),
    ("held", True, [], ["release"]),
    ("refused", True, [], []),  # released at the refusal already
    ("open", True, ["250 2.0.0 ok"], ["RSET", "release"]),
    ("broken", True, [], []),
]


@pytest.mark.parametrize(("state", "pooled", "upstream", "asked"), RSET_CASES)
def test_rset_in_every_state(state, pooled, upstream, asked) -> None:
    """RSET answers 250 always; RSET goes upstream only when a transaction is open there."""
    relay = Relay(pooled=pooled)
    _to_state(relay, state)
    assert relay.say("RSET", *upstream) == "250 2.0.0 OK"
    assert relay.took() == asked
    assert relay.core.phase is Phase.IDLE


@pytest.mark.parametrize(("state", "pooled", "upstream", "asked"), [
    ("no session", False, [], []),
    ("idle kept", False, [], ["quit"]),
    ("held", False, [], ["quit"]),
    ("refused", False, [], ["quit"]),
    ("open", False, [], ["quit"]),
    ("broken", False, [], []),
    ("held", True, [], ["release"]),
    ("open", True, ["250 2.0.0 ok"], ["RSET", "release"]),
])
def test_quit_in_every_state(state, pooled, upstream, asked) -> None:
    """QUIT: no pool, the session is closed with QUIT; pooled, it goes back clean (RSET first)."""
    relay = Relay(pooled=pooled)
    _to_state(relay, state)
    relay.say("QUIT", *upstream)
    assert relay.took() == asked
    assert relay.core.session is None


def test_null_and_bad_recipients_are_refused_locally() -> None:
    """RCPT TO:<> and a recipient with control characters never reach the upstream."""
    relay = Relay()
    relay.say("MAIL FROM:<a@x>", PIPELINING)
    relay.took()
    [answer] = relay.core.rcpt("<>")
    assert isinstance(answer, Answer) and answer.reply.one_line().startswith("501 5.1.3")
    [answer] = relay.core.rcpt("a\x01@y")
    assert isinstance(answer, Answer) and answer.reply.code == 501
    assert relay.took() == []


def test_loss_at_rset_drops_the_session_and_still_answers_250() -> None:
    """RSET with a transaction open upstream and the upstream gone: the client's RSET is 250 (its
    transaction is gone either way), the session is dropped, the next MAIL opens a new one."""
    relay = Relay()
    open_transaction(relay)
    assert relay.say("RSET", DEAD) == "250 2.0.0 OK"
    assert relay.took() == ["RSET", "drop"]
    assert relay.say("MAIL FROM:<a@x>", PIPELINING) == "250 2.1.0 Sender OK"
    assert relay.took() == ["acquire"]


def test_loss_at_the_rset_before_a_mail_is_retried_on_a_fresh_session() -> None:
    """The kept session still holds a refused message's transaction; the RSET sent before the next
    MAIL finds it dead: dropped, one fresh session, the MAIL is held as usual."""
    relay = Relay()
    open_transaction(relay)
    relay.say("DATA")
    relay.say(".", content=ContentResult(reply=_reply("451 4.3.0 later"), open_after=True))
    relay.took()
    assert relay.say("MAIL FROM:<a@x>", DEAD, PIPELINING) == "250 2.1.0 Sender OK"
    assert relay.took() == ["RSET", "drop", "acquire fresh"]


def test_loss_when_the_data_command_cannot_be_sent() -> None:
    """DATA cannot even be written (the connection closed after RCPT): the content path reports the
    failure at once; 451 4.4.2 and the session is dropped."""
    relay = Relay()
    relay.say("MAIL FROM:<a@x>", CLASSIC, "250 2.1.0 ok")
    relay.say("RCPT TO:<b@y>", "250 2.1.5 ok")
    relay.took()
    assert relay.say("DATA") == "354"
    assert relay.say(".", content=ContentResult(error=DEAD)).startswith("451 4.4.2")
    assert relay.took() == ["DATA", "drop"]

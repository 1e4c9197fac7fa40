"""The client side of the IMAP proxy before login, as a pure state machine (RFC 3501, 9051).

In the style of relay/pop3/protocol.py: bytes go in with :meth:`ImapProtocol.receive_data`,
events come out of :meth:`ImapProtocol.next_event`; nothing here touches a socket. The server
sends ``Reply`` events, decides ``LoginAttempt`` and ``StartTls`` (then calls back
:meth:`~ImapProtocol.login_succeeded` / :meth:`~ImapProtocol.login_failed` /
:meth:`~ImapProtocol.tls_started`). After a successful login the protocol is done: the session
takes the bytes the client already pipelined (:meth:`~ImapProtocol.take_buffered`) and relays the
connection as bytes both ways.

Handled in the not-authenticated state: CAPABILITY, NOOP, LOGOUT, STARTTLS, ID, LOGIN (atoms,
quoted strings, literals ``{n}`` and ``{n+}``) and AUTHENTICATE PLAIN (with and without SASL-IR,
``*`` cancels). Everything else gets a tagged BAD (or ``* BAD`` when no tag can be read).

Limits: a command line (each part between literals) may hold MAX_LINE_OCTETS; a literal may hold
MAX_LITERAL_OCTETS and is accepted only where a string may follow before login (LOGIN, ID). A
synchronising literal that is too large or not expected is refused before the client sends it
(tagged BAD, no ``+``); a non-synchronising one is read and dropped up to MAX_DISCARD_OCTETS, and
beyond that the connection ends with ``* BYE`` since the client and relay cannot stay in step.
The framing is `relay.imap.framing.ImapFraming` (this class's base); the events are in
`relay.imap.events`.
"""

from __future__ import annotations

from relay.errors import ProtocolInputError
from relay.imap.events import NEED_DATA, PAUSED, Event, LoginAttempt, Reply, StartTls, State
from relay.imap.framing import MAX_DISCARD_OCTETS, MAX_LINE_OCTETS, ImapFraming
from relay.imap.syntax import (
    Atom,
    ImapSyntaxError,
    LiteralAnnouncement,
    Paren,
    String,
    Token,
    astring,
    is_valid_tag,
    quote,
    split_literal,
    tagged,
    tokenize,
    untagged,
)
from relay.sasl import check_safe, decode_plain
from relay.secret import Secret

# Re-exported: the session and the tests import the events and limits from here.
__all__ = ["MAX_COMMAND_OCTETS", "MAX_DISCARD_OCTETS", "MAX_LINE_OCTETS", "MAX_LITERAL_OCTETS", "NEED_DATA",
           "PAUSED", "Event", "ImapProtocol", "LoginAttempt", "Reply", "StartTls", "State"]

MAX_LITERAL_OCTETS = 8192  # a user name or password literal
MAX_COMMAND_OCTETS = 64 * 1024  # all parts and literals of one command together
IMPLEMENTATION = "xoauth2-relay"
_STRING_COMMANDS = frozenset({b"LOGIN", b"ID"})  # the only commands taking literals before login
_AFTER_LOGIN = frozenset(
    b"SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB NAMESPACE STATUS APPEND "
    b"IDLE CHECK CLOSE UNSELECT EXPUNGE SEARCH FETCH STORE COPY MOVE UID ENABLE GETQUOTA "
    b"GETQUOTAROOT SETQUOTA GETACL SETACL MYRIGHTS LISTRIGHTS GETMETADATA SETMETADATA COMPRESS "
    b"ESEARCH SORT THREAD NOTIFY".split())


class _Bad(Exception):
    """A command error answered with BAD (``code`` is a response code such as TOOBIG)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class ImapProtocol(ImapFraming):
    """One client connection's pre-login IMAP state: framing, parsing and local replies."""

    def __init__(self, *, starttls_available: bool, tls_active: bool, plaintext_allowed: bool) -> None:
        self.state = State.NOT_AUTHENTICATED
        self.tls_active = tls_active
        self.starttls_available = starttls_available
        self.plaintext_allowed = plaintext_allowed
        self._buf = bytearray()
        self._pending: LoginAttempt | StartTls | None = None
        self._reset_command()
        self._discarding = False  # skipping the rest of an overlong line
        self._discard_tail = b""
        self._skip = 0  # bytes of a refused non-synchronising literal still to drop
        self._after_skip: Reply | None = None
        self._sasl_tag: bytes | None = None  # waiting for the AUTHENTICATE PLAIN response line

    def _reset_command(self) -> None:
        self._tokens: list[Token] = []
        self._tag: bytes | None = None
        self._literal: LiteralAnnouncement | None = None  # being read after its announcement
        self._command_octets = 0
        self._refused_literal = False  # a non-synchronising literal of a refused command

    def greeting(self) -> bytes:
        """The untagged OK the server sends first, with the relay's capabilities."""
        return untagged(f"OK [CAPABILITY {self.capabilities()}] IMAP relay ready")

    def capabilities(self) -> str:
        """The relay's own capability list before login (RFC 9051 section 7.2.2)."""
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.starttls_available and not self.tls_active:
            caps.append("STARTTLS")
        caps.append("AUTH=PLAIN" if self.plaintext_allowed else "LOGINDISABLED")
        return " ".join(caps)

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client."""
        if self.state is State.NOT_AUTHENTICATED:
            self._buf += data

    def take_buffered(self) -> bytes:
        """After login: return (and forget) the bytes the client sent behind its login command."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def next_event(self) -> Event:
        """Return the next event, or NEED_DATA / PAUSED."""
        if self._pending is not None:
            return PAUSED
        if self.state is not State.NOT_AUTHENTICATED:
            return NEED_DATA
        while True:
            if self._skip and not self._drop_skipped():
                return NEED_DATA
            if self._after_skip is not None:
                reply, self._after_skip = self._after_skip, None
                return reply
            if self._literal is not None:
                if not self._read_literal():
                    return NEED_DATA
                continue
            discarding = self._discarding
            line = self._next_line()
            if isinstance(line, Reply):
                return line
            if line is None:
                if discarding and not self._discarding:
                    continue  # the end of a refused line was found and dropped; go on
                return NEED_DATA
            event = self._line(line)
            if event is not None:
                return event

    # --- commands ---------------------------------------------------------------------------

    def _too_long(self, head: bytes) -> Reply:
        """The reply to an overlong line: tagged when its tag is known or readable."""
        tag = self._sasl_tag or self._tag or _leading_tag(head)
        self._reset_command()
        self._sasl_tag = None
        return Reply(tagged(tag or b"*", "BAD", "Command line too long", "TOOBIG"))

    def _line(self, line: bytes) -> Event | None:
        """Handle one line part; return an event, or None when the command continues."""
        if self._sasl_tag is not None:
            tag, self._sasl_tag = self._sasl_tag, None
            return self._sasl_response(tag, line, initial=False)
        text, literal = split_literal(line)
        self._command_octets += len(line) + (literal.size if literal else 0)
        try:
            if b"\x00" in text:
                raise _Bad("NUL is not allowed in a command")
            self._tokens += tokenize(text)
            if self._tag is None:
                self._tag = self._read_tag()
            if literal is not None:
                return self._announced(literal)
            tokens, tag = self._tokens, self._tag
            self._reset_command()
            self._tag = tag  # until the command is answered, for _refuse
            event = self._command(tag, tokens)
            self._tag = None
            return event
        except (_Bad, ImapSyntaxError) as exc:
            return self._refuse(exc, literal, line)

    def _read_tag(self) -> bytes:
        if not self._tokens:
            raise _Bad("Empty command line")
        first = self._tokens[0]
        if not isinstance(first, Atom) or not is_valid_tag(first.value):
            raise _Bad("Invalid or missing tag")
        return first.value

    def _announced(self, literal: LiteralAnnouncement) -> Event | None:
        command = self._tokens[1] if len(self._tokens) > 1 else None
        if not isinstance(command, Atom) or command.value.upper() not in _STRING_COMMANDS:
            raise _Bad("Literal not accepted here")
        if literal.size > MAX_LITERAL_OCTETS or self._command_octets > MAX_COMMAND_OCTETS:
            raise _Bad("Literal too large", "TOOBIG")
        self._literal = literal
        if literal.synchronising:
            return Reply(b"+ Ready for literal data\r\n")
        return None

    def _refuse(self, exc: _Bad | ImapSyntaxError, literal: LiteralAnnouncement | None,
                line: bytes) -> Event:
        tag = self._tag or _leading_tag(line) or b"*"
        self._reset_command()
        reply = Reply(tagged(tag, "BAD", str(exc), getattr(exc, "code", None)))
        if literal is None or literal.synchronising:
            return reply  # nothing more comes from the client for this command
        if literal.size > MAX_DISCARD_OCTETS:
            return self._bye_too_big()
        self._skip = literal.size
        self._refused_literal = True
        self._after_skip = reply
        return self.next_event()

    def _command(self, tag: bytes, tokens: list[Token]) -> Event:
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            raise _Bad("Missing command name")
        name = tokens[1].value.upper()
        args = tokens[2:]
        if name in (b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS") and args:
            raise _Bad(f"{name.decode()} takes no arguments")
        if name == b"CAPABILITY":
            return Reply(untagged(f"CAPABILITY {self.capabilities()}")
                         + tagged(tag, "OK", "CAPABILITY completed"))
        if name == b"NOOP":
            return Reply(tagged(tag, "OK", "NOOP completed"))
        if name == b"LOGOUT":
            self.state = State.CLOSED
            return Reply(untagged("BYE Logging out") + tagged(tag, "OK", "LOGOUT completed"), close=True)
        if name == b"STARTTLS":
            return self._starttls(tag)
        if name == b"ID":
            return self._id(tag, args)
        if name == b"LOGIN":
            return self._login_command(tag, args)
        if name == b"AUTHENTICATE":
            return self._authenticate(tag, args)
        if name in _AFTER_LOGIN:
            raise _Bad(f"{name.decode(errors='replace')} is not allowed before login")
        raise _Bad("Unknown command")

    def _starttls(self, tag: bytes) -> Event:
        if self.tls_active:
            raise _Bad("TLS is already active")
        if not self.starttls_available:
            raise _Bad("STARTTLS is not available on this listener")
        # Bytes pipelined behind STARTTLS were sent in clear text: never act on them after TLS.
        self._buf.clear()
        self._pending = StartTls(tagged(tag, "OK", "Begin TLS negotiation now"))
        return self._pending

    def _id(self, tag: bytes, args: list[Token]) -> Event:
        if not (args == [Atom(b"NIL")] or _is_id_list(args)):
            raise _Bad("Syntax: ID NIL or ID (\"field\" \"value\" ...)")
        return Reply(untagged(f"ID ({quote('name').decode()} {quote(IMPLEMENTATION).decode()})")
                     + tagged(tag, "OK", "ID completed"))

    def _login_command(self, tag: bytes, args: list[Token]) -> Event:
        if len(args) != 2:
            raise _Bad("Syntax: LOGIN user-name password")
        username, password = astring(args[0], "user name"), astring(args[1], "password")
        if not self.plaintext_allowed:
            return Reply(tagged(tag, "NO", "Plaintext login disallowed on non-secure connections: "
                                "use STARTTLS or the TLS port", "PRIVACYREQUIRED"))
        if not username or not password:
            raise _Bad("LOGIN needs a user name and a password")
        return self._login(tag, username, password, "LOGIN")

    def _authenticate(self, tag: bytes, args: list[Token]) -> Event:
        if not args or len(args) > 2 or not all(isinstance(a, Atom) for a in args):
            raise _Bad("Syntax: AUTHENTICATE mechanism [initial-response]")
        mechanism = args[0].value.upper()  # type: ignore[union-attr]
        if mechanism != b"PLAIN":
            return Reply(tagged(tag, "NO", "Unsupported authentication mechanism; use PLAIN",
                                "CANNOT"))
        if not self.plaintext_allowed:
            return Reply(tagged(tag, "NO", "Plaintext authentication disallowed on non-secure "
                                "connections: use STARTTLS or the TLS port", "PRIVACYREQUIRED"))
        if len(args) == 2:
            return self._sasl_response(tag, args[1].value, initial=True)  # type: ignore[union-attr]
        self._sasl_tag = tag
        return Reply(b"+ \r\n")

    def _sasl_response(self, tag: bytes, line: bytes, *, initial: bool) -> Event:
        if line == b"*" and not initial:
            return Reply(tagged(tag, "BAD", "Authentication cancelled"))
        try:
            creds = decode_plain(b"" if line == b"=" else line)
        except ProtocolInputError as exc:
            return Reply(tagged(tag, "BAD", str(exc)))
        if creds.authzid and creds.authzid != creds.username:
            return Reply(tagged(tag, "NO", "Authorization identity must be empty or equal the user "
                                "name", "AUTHORIZATIONFAILED"))
        return self._login(tag, creds.username, creds.password, "PLAIN")

    def _login(self, tag: bytes, username: str, password: str, mechanism: str) -> Event:
        try:
            check_safe(username, "user name")
            check_safe(password, "password")
        except ProtocolInputError as exc:
            return Reply(tagged(tag, "BAD", str(exc)))
        self._pending = LoginAttempt(tag, username, Secret(password), mechanism)
        return self._pending

    # --- decisions from the server ---------------------------------------------------------

    def login_succeeded(self) -> None:
        """Local and upstream login worked: the session relays bytes from now on."""
        self._expect_pending(LoginAttempt)
        self.state = State.AUTHENTICATED

    def login_failed(self) -> None:
        """The login was refused (the server sent the tagged NO); stay before login."""
        self._expect_pending(LoginAttempt)

    def tls_started(self, *, plaintext_allowed: bool) -> None:
        """The TLS handshake after STARTTLS completed; forget everything said before it."""
        self._expect_pending(StartTls)
        self.tls_active = True
        self.plaintext_allowed = plaintext_allowed
        self._buf.clear()
        self._reset_command()

    def _expect_pending(self, kind: type) -> None:
        if not isinstance(self._pending, kind):
            raise RuntimeError(f"no {kind.__name__} is pending")
        self._pending = None


def _leading_tag(head: bytes) -> bytes | None:
    tag, sep, _ = head.partition(b" ")
    return tag if sep and is_valid_tag(tag) else None


def _is_id_list(args: list[Token]) -> bool:
    """``( *(string SP nstring) )`` with at most 30 pairs (RFC 2971)."""
    if len(args) < 2 or args[0] != Paren(True) or args[-1] != Paren(False):
        return False
    inner = args[1:-1]
    if len(inner) % 2 or len(inner) > 60:
        return False
    return all(isinstance(t, String) or (i % 2 == 1 and t == Atom(b"NIL"))
               for i, t in enumerate(inner))

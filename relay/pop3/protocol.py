"""The client side of the POP3 proxy as a pure state machine (RFC 1939, 2449, 2595, 5034).

In the style of h11: bytes go in with :meth:`Pop3Protocol.receive_data`, events come out of
:meth:`Pop3Protocol.next_event`; nothing here touches a socket. The server answers ``Reply``
events itself, decides ``LoginAttempt`` and ``StartTls`` (then calls back
:meth:`~Pop3Protocol.login_succeeded` / :meth:`~Pop3Protocol.login_failed` /
:meth:`~Pop3Protocol.tls_started`) and forwards ``UpstreamCommand`` events.

Commands are framed by LF: CRLF, or a bare LF with ``bare_lf="normalize"`` (the default); with
``"reject"`` a command ending in a bare LF gets ``-ERR`` and the connection closes
(``listen.pop3.bare_lf``, the same decision as for SMTP). A line longer than 255 octets (RFC 2449) is
answered once with ``-ERR Line too long`` and skipped up to its line end, so the client and relay
stay in step. Commands sent upstream are rebuilt from validated parts, never copied, so a client
cannot smuggle extra protocol upstream.

PIPELINING (RFC 2449) is advertised because it holds end to end: the relay takes one command at a
time from its buffer and answers it completely (forwarding it and streaming the whole reply)
before looking at the next, so replies come back in order; the upstream never sees more than one
command in flight and need not support pipelining itself. Only STLS ends a pipeline: bytes after
it are discarded (RFC 2595 section 4, against command injection before the TLS handshake).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from relay.errors import ProtocolInputError
from relay.lineproto.events import NEED_DATA, PAUSED, Reply, Signal, StartTls
from relay.pop3.replies import err, is_multiline, multiline, ok
from relay.sasl import check_safe, decode_plain
from relay.secret import Secret

# Re-exported: the session and the tests import the events from here.
__all__ = ["MAX_COMMAND_OCTETS", "MAX_SASL_RESPONSE_OCTETS", "NEED_DATA", "PAUSED", "Event", "LoginAttempt",
           "Pop3Protocol", "Reply", "StartTls", "State", "UpstreamCommand"]

MAX_COMMAND_OCTETS = 255  # RFC 2449 section 4, including CRLF
MAX_SASL_RESPONSE_OCTETS = 2048  # a `+ ` continuation line (RFC 5034 sets no limit of its own)
IMPLEMENTATION = "xoauth2-relay"


class State(enum.Enum):
    """The POP3 session states the client sees (UPDATE happens upstream, after QUIT)."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    CLOSED = "CLOSED"


class _Cut(enum.Enum):
    """Why `_next_line` returned no line to parse."""

    TOO_LONG = "TOO_LONG"
    BARE_LF = "BARE_LF"  # a line ended by LF alone, with bare_lf="reject"


@dataclass(frozen=True)
class LoginAttempt:
    """A local login (USER/PASS or AUTH PLAIN) to check; the protocol pauses until decided."""

    username: str
    password: Secret
    mechanism: str  # "USER" or "PLAIN"


@dataclass(frozen=True)
class UpstreamCommand:
    """A TRANSACTION command to forward; ``multiline`` says whether a +OK answer is multi-line."""

    keyword: str
    line: bytes  # canonical command line with CRLF
    multiline: bool
    quit: bool = False


Event = Reply | LoginAttempt | StartTls | UpstreamCommand | Signal

_TRANSACTION_ARGS: dict[str, tuple[int, int]] = {  # keyword -> (min, max) numeric arguments
    "STAT": (0, 0), "NOOP": (0, 0), "RSET": (0, 0), "QUIT": (0, 0),
    "LIST": (0, 1), "UIDL": (0, 1), "RETR": (1, 1), "DELE": (1, 1), "TOP": (2, 2),
}
_AUTH_COMMANDS = frozenset({"USER", "PASS", "AUTH", "APOP", "STLS"})
_UPSTREAM_CAPS_PASSED_ON = ("EXPIRE", "LOGIN-DELAY")


def _is_number(arg: str) -> bool:
    return arg.isascii() and arg.isdigit() and len(arg) <= 10


class Pop3Protocol:
    """One client connection's POP3 state: framing, parsing, states and local replies."""

    def __init__(self, *, stls_available: bool, tls_active: bool, plaintext_allowed: bool,
                 bare_lf: str = "normalize") -> None:
        self.state = State.AUTHORIZATION
        self.reject_bare_lf = bare_lf == "reject"
        self.tls_active = tls_active
        self.stls_available = stls_available
        self.plaintext_allowed = plaintext_allowed
        self._buf = bytearray()
        self._discarding = False  # skipping the rest of an overlong line
        self._in_sasl = False  # waiting for the AUTH PLAIN `+ ` continuation line
        self._username: str | None = None
        self._pending: LoginAttempt | StartTls | None = None
        self._upstream_caps: tuple[str, ...] | None = None

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client."""
        if self.state is not State.CLOSED:
            self._buf += data

    def next_event(self) -> Event:
        """Return the next event, or NEED_DATA / PAUSED."""
        if self._pending is not None:
            return PAUSED
        if self.state is State.CLOSED:
            return NEED_DATA
        line = self._next_line()
        if line is NEED_DATA:
            return NEED_DATA
        sasl = self._in_sasl
        self._in_sasl = False
        if line is _Cut.TOO_LONG:
            return Reply(err("Line too long"))
        if line is _Cut.BARE_LF:
            self.state = State.CLOSED
            self._buf.clear()
            return Reply(err("Bare LF received; end every line with CRLF"), close=True)
        assert isinstance(line, bytes)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return Reply(err("Command is not valid UTF-8"))
        if sasl:
            return self._sasl_response(text)
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if self.state is State.AUTHORIZATION:
            return self._authorization(keyword, rest)
        return self._transaction(keyword, rest)

    def _max_content(self) -> int:
        limit = MAX_SASL_RESPONSE_OCTETS if self._in_sasl else MAX_COMMAND_OCTETS
        return limit - 2

    def _next_line(self) -> bytes | Signal | _Cut:
        """Cut the next line (without its line end) from the buffer, or tell why not."""
        if self._discarding:
            end = self._buf.find(b"\n")
            if end < 0:
                self._buf.clear()
                return NEED_DATA
            del self._buf[: end + 1]
            self._discarding = False
        end = self._buf.find(b"\n")
        if end < 0:
            # A trailing CR may be the first half of CRLF, so it does not count yet.
            content = len(self._buf) - (1 if self._buf.endswith(b"\r") else 0)
            if content > self._max_content():
                self._buf.clear()
                self._discarding = True
                return _Cut.TOO_LONG
            return NEED_DATA
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        elif self.reject_bare_lf:
            return _Cut.BARE_LF
        if len(line) > self._max_content():
            return _Cut.TOO_LONG
        return line

    # --- AUTHORIZATION ---------------------------------------------------------------------

    def _authorization(self, keyword: str, rest: str) -> Event:
        if keyword == "CAPA":
            return Reply(multiline(ok("Capability list follows"), self._capabilities()))
        if keyword == "QUIT":
            self.state = State.CLOSED
            return Reply(ok("Logging out"), close=True)
        if keyword == "STLS":
            return self._stls(rest)
        if keyword in ("USER", "PASS", "AUTH") and not self.plaintext_allowed and rest:
            return Reply(err("Plaintext authentication disallowed on non-secure connections: "
                             "TLS required (use STLS or the TLS port)", "AUTH"))
        if keyword == "USER":
            return self._user(rest)
        if keyword == "PASS":
            return self._pass(rest)
        if keyword == "AUTH":
            return self._auth(rest)
        if keyword == "APOP":
            return Reply(err("APOP is not supported; use USER/PASS or AUTH PLAIN"))
        if keyword in _TRANSACTION_ARGS:
            return Reply(err(f"{keyword} is not allowed before login"))
        return Reply(err("Unknown command"))

    def _stls(self, rest: str) -> Event:
        if rest:
            return Reply(err("STLS takes no arguments"))
        if self.tls_active:
            return Reply(err("TLS is already active"))
        if not self.stls_available:
            return Reply(err("STLS is not available on this listener"))
        # Bytes pipelined behind STLS were sent in clear text: never act on them after TLS.
        self._buf.clear()
        self._discarding = False
        self._pending = StartTls(ok("Begin TLS negotiation now"))
        return self._pending

    def _user(self, rest: str) -> Event:
        name = rest.strip(" ")
        if not name:
            return Reply(err("USER needs a user name"))
        try:
            self._username = check_safe(name, "user name")
        except ProtocolInputError as exc:
            self._username = None
            return Reply(err(str(exc)))
        return Reply(ok("Send your password"))

    def _pass(self, rest: str) -> Event:
        username, self._username = self._username, None
        if username is None:
            return Reply(err("Send USER before PASS"))
        if not rest:
            return Reply(err("PASS needs a password"))
        try:
            check_safe(rest, "password")
        except ProtocolInputError as exc:
            return Reply(err(str(exc)))
        return self._login(username, rest, "USER")

    def _auth(self, rest: str) -> Event:
        args = rest.split(" ") if rest else []
        if not args:  # the mechanism list, as Dovecot and Exchange answer a bare AUTH
            mechanisms = [b"PLAIN"] if self.plaintext_allowed else []
            return Reply(multiline(ok("Supported mechanisms follow"), mechanisms))
        if args[0].upper() != "PLAIN":
            return Reply(err("Unsupported authentication mechanism; use PLAIN"))
        if len(args) > 2:
            return Reply(err("Syntax: AUTH PLAIN [initial-response]"))
        if len(args) == 2:
            return self._sasl_response(args[1], initial=True)
        self._in_sasl = True
        return Reply(b"+ \r\n")

    def _sasl_response(self, text: str, *, initial: bool = False) -> Event:
        if text == "*" and not initial:
            return Reply(err("Authentication cancelled"))
        try:
            creds = decode_plain("" if text == "=" else text)
        except ProtocolInputError as exc:
            return Reply(err(str(exc)))
        if creds.authzid and creds.authzid != creds.username:
            return Reply(err("Authorization identity must be empty or equal the user name", "AUTH"))
        return self._login(creds.username, creds.password, "PLAIN")

    def _login(self, username: str, password: str, mechanism: str) -> LoginAttempt:
        self._pending = LoginAttempt(username, Secret(password), mechanism)
        return self._pending

    def _capabilities(self) -> list[bytes]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.plaintext_allowed:
            caps += ["USER", "SASL PLAIN"]
        if self.stls_available and not self.tls_active:
            caps.append("STLS")
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return [c.encode() for c in caps]

    # --- decisions from the server ---------------------------------------------------------

    def login_succeeded(self) -> None:
        """The local login and the upstream login both worked: enter TRANSACTION."""
        self._expect_pending(LoginAttempt)
        self.state = State.TRANSACTION

    def login_failed(self) -> None:
        """The login was refused; stay in AUTHORIZATION (the server sent the -ERR)."""
        self._expect_pending(LoginAttempt)

    def tls_started(self, *, plaintext_allowed: bool) -> None:
        """The TLS handshake after STLS completed; forget everything said before it."""
        self._expect_pending(StartTls)
        self.tls_active = True
        self.plaintext_allowed = plaintext_allowed
        self._username = None
        self._buf.clear()
        self._discarding = False

    def set_upstream_capabilities(self, capabilities: Iterable[str] | None) -> None:
        """Record the upstream's CAPA lines (None: it has no CAPA) to answer CAPA after login."""
        self._upstream_caps = None if capabilities is None else tuple(capabilities)

    def _expect_pending(self, kind: type) -> None:
        if not isinstance(self._pending, kind):
            raise RuntimeError(f"no {kind.__name__} is pending")
        self._pending = None

    # --- TRANSACTION -----------------------------------------------------------------------

    def _transaction(self, keyword: str, rest: str) -> Event:
        if keyword == "CAPA":
            return Reply(multiline(ok("Capability list follows"), self._transaction_capabilities()))
        if keyword in _AUTH_COMMANDS:
            return Reply(err(f"{keyword} is not allowed after login"))
        limits = _TRANSACTION_ARGS.get(keyword)
        if limits is None:
            return Reply(err("Unknown command"))
        args = rest.split()
        low, high = limits
        if not low <= len(args) <= high or not all(_is_number(a) for a in args):
            return Reply(err(f"Syntax error in {keyword} arguments"))
        line = " ".join([keyword, *args]).encode() + b"\r\n"
        quit_ = keyword == "QUIT"
        if quit_:
            self.state = State.CLOSED
        return UpstreamCommand(keyword, line, is_multiline(keyword, len(args)), quit=quit_)

    def _transaction_capabilities(self) -> list[bytes]:
        upstream = self._upstream_caps
        names = {c.split(" ", 1)[0].upper() for c in upstream} if upstream is not None else None
        caps = [c for c in ("TOP", "UIDL") if names is None or c in names]
        caps += ["RESP-CODES", "PIPELINING"]
        for line in upstream or ():
            if line.split(" ", 1)[0].upper() in _UPSTREAM_CAPS_PASSED_ON:
                caps.append(line)
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return [c.encode() for c in caps]

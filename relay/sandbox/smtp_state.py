"""The state of `relay.sandbox.smtp_upstream.SandboxSmtpServer`: fault switches, stored
messages, transcripts and per-mailbox session counts (everything but the connections), and the
values tests read from it (`StoredMessage`, `Transcript`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.sandbox.loop import LoopbackServer
from relay.sandbox.oauth_grants import ANY_MAILBOX
from relay.tlsutil import server_context

MAX_LINE_BYTES = 12288 + 2  # Postfix accepts 12288 after a 334; we allow it for any line
DEFAULT_MAX_MESSAGE_BYTES = 35 * 1024 * 1024

AuthFailureStyle = Literal["google", "microsoft"]
SmtpTlsMode = Literal["starttls", "implicit", "none"]


@dataclass(frozen=True)
class StoredMessage:
    """A message the server accepted: the bytes after dot-unstuffing (CRLF kept) and its envelope."""

    seq: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    user: str | None  # the authenticated mailbox (XOAUTH2 user=)
    mail_options: tuple[str, ...] = ()
    received_at: float = 0.0


CONCURRENCY_REFUSAL = ("432 4.3.2 Concurrent connections limit exceeded. Visit "
                       "https://aka.ms/concurrent_sending "
                       "for more information. [Hostname={host}]")
"""Exchange Online's reply (at the end of the message) when a mailbox has too many sessions."""

MESSAGE_ENDS = (".", "BDAT LAST")
"""Transcript entries that end a message: the DATA content with its final dot, a BDAT LAST."""


@dataclass
class Transcript:
    """One connection's commands in order, each with the client turn it arrived in (a turn starts
    whenever the server has answered everything it read and waits for the client). ``BDAT`` with
    LAST is recorded as ``"BDAT LAST"``; DATA content up to its final dot as ``"."``."""

    commands: list[tuple[int, str]] = field(default_factory=list)  # (turn, verb)

    def verbs(self) -> list[str]:
        """The verbs in order."""
        return [verb for _, verb in self.commands]

    def message_turns(self) -> int:
        """Client turns (round trips) from the first MAIL to the end of the first message."""
        verbs = self.verbs()
        start = verbs.index("MAIL")
        end = next(i for i, verb in enumerate(verbs) if i > start and verb in MESSAGE_ENDS)
        return len({turn for turn, _ in self.commands[start:end + 1]})


def token_matcher(validate_token: Callable[[str], str | None]) -> Callable[[str, str], bool]:
    """Turn a token->mailbox validator into a (token, mailbox)->allowed check."""
    def allows(token: str, mailbox: str) -> bool:
        owner = validate_token(token)
        return owner is not None and (owner == ANY_MAILBOX or owner.lower() == mailbox.lower())
    return allows


class SandboxSmtpState(LoopbackServer):
    """A loopback SMTP submission server's state and fault switches (the base of SandboxSmtpServer).

    ``validate_token(token) -> mailbox | None`` is usually `SandboxOAuthProvider.validate_access_token`;
    ``authorize(token, mailbox) -> bool``, when given, decides instead (app-only mailbox sets).
    """

    def __init__(
        self,
        validate_token: Callable[[str], str | None],
        cert_file: Path,
        key_file: Path,
        *,
        port: int = 0,
        tls_mode: SmtpTlsMode = "starttls",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        hostname: str = "smtp.sandbox.test",
        auth_failure_style: AuthFailureStyle = "google",
        authorize: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._tls = server_context(cert_file, key_file, "sandbox.smtp")
        super().__init__(port=port, ssl_context=self._tls if tls_mode == "implicit" else None)
        self.tls_mode = tls_mode
        self.hostname = hostname
        self.max_message_bytes = max_message_bytes
        self.auth_failure_style: AuthFailureStyle = auth_failure_style
        self.authorize = authorize or token_matcher(validate_token)
        self._messages: list[StoredMessage] = []
        self._transcripts: list[Transcript] = []
        self._seq = itertools.count(1)
        self._arrived = threading.Condition(self.lock)
        # Exchange-like cap: authenticated sessions per mailbox (None: unlimited); a message ending
        # while its mailbox has more gets CONCURRENCY_REFUSAL. Peak counts per mailbox for tests.
        self.max_sessions_per_mailbox: int | None = None
        self._sessions_per_mailbox: dict[str, int] = {}
        self.peak_sessions_per_mailbox: dict[str, int] = {}
        self.clear_faults()

    def clear_faults(self) -> None:
        """Reset every fault switch to normal behaviour."""
        self.reject_rcpt: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.next_mail_replies: list[str] = []  # one-shot replies to the next MAILs, before mail_reply
        self.data_reply: str | None = None
        self.final_reply: str | None = None  # after the final dot or BDAT LAST
        self.bdat_replies: dict[int, str] = {}  # BDAT chunk number (1-based) -> reply instead of 250
        self.advertise_pipelining = True
        self.advertise_chunking = True
        self.greeting_reply: str | None = None
        self.drop_after_data_bytes: int | None = None
        self.never_greet = False
        self.delay_s = 0.0

    # --- stored messages ----------------------------------------------------------------------

    def messages(self) -> list[StoredMessage]:
        """Every accepted message, oldest first."""
        with self.lock:
            return list(self._messages)

    def clear(self) -> None:
        """Forget the stored messages and the transcripts."""
        with self.lock:
            self._messages.clear()
            self._transcripts.clear()

    def take_mail_reply(self) -> str | None:
        """The reply for the next MAIL: a queued one-shot reply, else ``mail_reply`` (None: 250)."""
        with self.lock:
            return self.next_mail_replies.pop(0) if self.next_mail_replies else self.mail_reply

    def transcripts(self) -> list[Transcript]:
        """Every connection's commands so far, oldest connection first (copies)."""
        with self.lock:
            return [Transcript(list(t.commands)) for t in self._transcripts]

    def _session_started(self, mailbox: str) -> None:
        key = mailbox.lower()
        with self.lock:
            now = self._sessions_per_mailbox.get(key, 0) + 1
            self._sessions_per_mailbox[key] = now
            self.peak_sessions_per_mailbox[key] = max(now, self.peak_sessions_per_mailbox.get(key, 0))

    def _session_ended(self, mailbox: str) -> None:
        key = mailbox.lower()
        with self.lock:
            self._sessions_per_mailbox[key] -= 1

    def over_session_limit(self, mailbox: str) -> bool:
        """True when ``mailbox`` has more authenticated sessions than ``max_sessions_per_mailbox``."""
        with self.lock:
            limit = self.max_sessions_per_mailbox
            return limit is not None and self._sessions_per_mailbox.get(mailbox.lower(), 0) > limit

    def _new_transcript(self) -> Transcript:
        with self.lock:
            transcript = Transcript()
            self._transcripts.append(transcript)
            return transcript

    def _record(self, transcript: Transcript, turn: int, verb: str) -> None:
        with self.lock:
            transcript.commands.append((turn, verb))

    def wait_for_messages(self, count: int, timeout_s: float = 10.0) -> list[StoredMessage]:
        """Block until at least ``count`` messages are stored (or the timeout passes); return them."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self._messages) >= count, timeout_s)
            return list(self._messages)

    def _store(self, mail_from: str, rcpt_tos: tuple[str, ...], data: bytes, user: str | None,
               mail_options: tuple[str, ...]) -> StoredMessage:
        with self._arrived:
            msg = StoredMessage(next(self._seq), mail_from, rcpt_tos, data, user, mail_options, time.time())
            self._messages.append(msg)
            self._counters["messages"] += 1
            self._arrived.notify_all()
            return msg

"""Sending through Microsoft Graph: a `relay.smtp.delivery.Delivery` for ``send_via: graph``.

MAIL and RCPT collect the envelope locally (MAIL refuses a declared SIZE over the limit). The
content is unstuffed into memory: at most Graph's 4 MB request (about 3 MB of MIME), or
``limits.max_message_bytes`` with ``large_messages: upload_session``. After the final dot it is
sent as one ``POST /users/{mailbox}/sendMail`` with the base64 MIME (``Content-Type:
text/plain``, PROTOCOLS.md 9.1); a larger message with ``upload_session`` goes as draft +
attachment uploads (`relay.graph.upload`). Envelope-only recipients become a Bcc field
(`relay.graph.envelope`). The client hears 250 only on ``202 Accepted``; every other answer is
mapped by `relay.graph.answers.send_reply` and logged with the operator's fix.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping, Sequence

from relay.config.model import AccountConfig, GraphConfig, LimitsConfig
from relay.errors import GraphError, OAuthError, RelayError
from relay.explain import log_explanation
from relay.graph.answers import send_reply
from relay.graph.client import GraphClient, GraphService
from relay.graph.envelope import envelope_into_headers
from relay.graph.upload import send_large, split_large
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.smtp import replies
from relay.smtp.bdat import Unstuffer
from relay.smtp.dataframe import DataFramer, DataProblem
from relay.smtp.delivery import ConnectionInfo, ContentSink, Delivery, DeliveryFactory
from relay.smtp.reply import EhloCapabilities, SmtpReply

log = logging.getLogger("relay.graph")

MAX_RECIPIENTS = 500  # Exchange Online's per-message recipient limit
BCC_ROOM_BYTES = 16 * 1024  # SIZE leaves this for the Bcc field the relay may add
# 8-bit content passes through base64 unchanged; SMTPUTF8 addresses in MIME headers: not offered.
GRAPH_CAPABILITIES = EhloCapabilities(eight_bit_mime=True, smtputf8=False)
ACCEPTED = SmtpReply.make(250, "2.0.0", "OK: accepted by Microsoft Graph")
RECIPIENT_OK = SmtpReply.make(250, "2.1.5", "Recipient OK")
TOO_MANY_RECIPIENTS = SmtpReply.make(452, "4.5.3", f"Too many recipients (at most {MAX_RECIPIENTS} "
                                     "per message through Microsoft Graph)")
TOKEN_UNAVAILABLE = SmtpReply.make(454, "4.7.0", "Temporary authentication failure, the relay "
                                   "operator must check the account's authorization")
NOTHING_TO_DETACH = SmtpReply.make(552, "5.3.4", "Message too big for Microsoft Graph and it has no "
                                  "attachment to upload separately; shorten the message text")
_PROBLEMS = {DataProblem.LINE_TOO_LONG: replies.LINE_TOO_LONG,
             DataProblem.BARE_LINE_END: replies.BARE_LINE_END}


def raw_limit(max_request_bytes: int) -> int:
    """The largest MIME message whose base64 fits in ``max_request_bytes``."""
    return max_request_bytes // 4 * 3


def size_limit(graph: GraphConfig, max_message_bytes: int) -> int:
    """The largest message the relay accepts for Graph: ``max_message_bytes`` (the relay's
    ``limits.max_message_bytes``) with ``large_messages: upload_session``, else Graph's request
    limit as MIME bytes less room for a Bcc field (or ``max_message_bytes``, if lower)."""
    if graph.large_messages == "upload_session":
        return max_message_bytes
    return min(max_message_bytes, raw_limit(graph.max_request_bytes) - BCC_ROOM_BYTES)


async def send_mime(client: GraphClient, mime: bytes, recipients: Sequence[str],
                    limit: int) -> SmtpReply | None:
    """Send a finished message as ``client``'s mailbox: envelope-only recipients become Bcc, then
    one sendMail, or draft + upload session for a large message when ``large_messages:
    upload_session``. None when Graph accepted it (202); a refusal when it was not sent (its
    headers or its size). Raises GraphError (Graph's answer), OAuthError (no token), RelayError
    (Graph unreachable)."""
    enveloped = envelope_into_headers(mime, list(recipients))
    if enveloped.refusal is not None:
        return enveloped.refusal
    body = base64.b64encode(enveloped.mime)
    max_request = client.graph.max_request_bytes
    if len(body) <= max_request:
        await client.request("POST", f"{client.user_path}/sendMail", what="sendMail", content=body,
                             headers={"Content-Type": "text/plain"}, expect=(202,))
        return None
    if client.graph.large_messages != "upload_session":
        return too_big(limit)
    split = await asyncio.to_thread(split_large, enveloped.mime, max_request)
    if split is None:
        return NOTHING_TO_DETACH
    await send_large(client, split)
    return None


def too_big(limit: int) -> SmtpReply:
    """552 for a message over Graph's limit, with the way out."""
    return SmtpReply.make(552, "5.3.4", f"Message too big for Microsoft Graph (at most {limit} bytes; "
                          "Graph's request limit is 4 MB including base64); send smaller attachments")


class GraphDelivery:
    """One connection's transactions for an account with ``send_via: graph``."""

    def __init__(self, account: AccountConfig, conn: ConnectionInfo, *, client: GraphClient,
                 limits: LimitsConfig, observer: RelayObserver = NULL_OBSERVER) -> None:
        self.account = account
        self.observer = observer
        self.conn = conn
        self.client = client
        self.limit = size_limit(client.graph, limits.max_message_bytes)
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.messages = 0
        self.bytes = 0
        self.last_reply: str | None = None

    # --- Delivery -------------------------------------------------------------------------------

    def size_limit(self) -> int:
        """Graph's request limit as MIME bytes, less room for a Bcc field (or ours, if lower)."""
        return self.limit

    def path_capabilities(self) -> EhloCapabilities | None:
        """8BITMIME end to end (base64 carries any byte); no SMTPUTF8."""
        return GRAPH_CAPABILITIES

    async def mail(self, sender: str, options: Mapping[str, str]) -> SmtpReply:
        """Start a transaction locally; a declared SIZE over the limit is refused at once."""
        declared = options.get("SIZE", "")
        if declared.isdigit() and int(declared) > self.limit:
            return too_big(self.limit)
        self.sender, self.recipients = sender, []
        return replies.SENDER_OK

    async def rcpt(self, address: str) -> SmtpReply:
        """Collect a recipient (Graph is told at the end, through the headers)."""
        if self.sender is None:
            return SmtpReply.make(503, "5.5.1", "Error: need MAIL command")
        if len(self.recipients) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        self.recipients.append(address)
        return RECIPIENT_OK

    async def open_content(self) -> ContentSink | SmtpReply:
        """DATA: a buffer for the content (354 at once)."""
        if not self.recipients:
            return replies.NEED_RCPT
        return GraphContent(self, self.limit)

    async def reset(self) -> None:
        """Forget the envelope (nothing was sent)."""
        self.sender, self.recipients = None, []

    async def quit(self) -> None:
        """Nothing is open at Graph between messages."""
        await self.reset()

    def close(self) -> None:
        """Client gone: an unfinished message is simply dropped (it was never sent)."""
        self.sender, self.recipients = None, []

    def summary(self) -> tuple[int, int, str | None]:
        """(messages accepted, bytes, the last Graph answer) for the session log line."""
        return self.messages, self.bytes, self.last_reply

    # --- sending --------------------------------------------------------------------------------

    async def send(self, mime: bytes) -> SmtpReply:
        """sendMail for the finished message; the client's reply after its final dot."""
        recipients, self.sender, self.recipients = self.recipients, None, []
        started = time.monotonic()
        try:
            with self.conn.busy():
                refusal = await send_mime(self.client, mime, recipients, self.limit)
        except GraphError as exc:
            self._log(str(exc))
            self.last_reply = exc.reply.one_line() if exc.reply else None
            log_explanation(self.account.name, self.account.mailbox, self.last_reply)  # once per cause
            self.observer.upstream_failure(self.account.name, "graph", str(exc))
            reply = send_reply(exc)
            elapsed_s = time.monotonic() - started
            self.observer.message_finished(self.account.name, reply.code, len(mime), elapsed_s)
            return reply
        except OAuthError as exc:
            self._log(f"no Microsoft Graph token: {exc}")
            self.observer.upstream_failure(self.account.name, "graph", str(exc))
            return TOKEN_UNAVAILABLE
        except RelayError as exc:  # Graph unreachable (UpstreamUnavailable)
            self._log(str(exc))
            self.observer.upstream_failure(self.account.name, "graph", str(exc))
            self.observer.message_finished(self.account.name, None, len(mime), time.monotonic() - started)
            return replies.UPSTREAM_UNREACHABLE
        if refusal is not None:
            self._log(f"message refused before sending: {refusal.one_line()}")
            return refusal
        self.observer.message_finished(self.account.name, 250, len(mime), time.monotonic() - started)
        self.messages += 1
        self.bytes += len(mime)
        self.last_reply = "HTTP 202 Accepted"
        return ACCEPTED

    def _log(self, message: str) -> None:
        log.warning("smtp session %s: account '%s' via Graph: %s", self.conn.session_id,
                    self.account.name, message)


class GraphContent:
    """The client's DATA, unstuffed into memory; `finish` sends it."""

    def __init__(self, delivery: GraphDelivery, max_bytes: int) -> None:
        self.delivery = delivery
        self.max_bytes = max_bytes
        self.unstuffer = Unstuffer()
        self.parts: list[bytes] = []
        self.abandoned = False

    async def write(self, wire_bytes: bytes) -> None:
        """Keep the content (the framer stops feeding once a limit is exceeded)."""
        if not self.abandoned:
            self.parts.append(self.unstuffer.feed(wire_bytes))

    def abandon(self) -> None:
        """Nothing will be sent."""
        self.abandoned = True
        self.parts = []

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> SmtpReply:
        """Our refusal for bad content, else Graph's verdict on the whole message."""
        if framer.problem is DataProblem.TOO_BIG:
            self.abandon()
            return too_big(self.max_bytes)
        if framer.problem is not None:
            self.abandon()
            return _PROBLEMS[framer.problem]
        if self.abandoned:
            return replies.LOCAL_ERROR
        self.parts.append(self.unstuffer.feed(tail))
        mime, self.parts = b"".join(self.parts), []
        return await self.delivery.send(mime)


class GraphDeliveries:
    """A `DeliveryFactory`: Graph for ``send_via: graph`` accounts, ``otherwise`` (live SMTP
    forwarding) for the rest."""

    def __init__(self, service: GraphService, limits: LimitsConfig, otherwise: DeliveryFactory, *,
                 observer: RelayObserver = NULL_OBSERVER) -> None:
        self.service = service
        self.limits = limits
        self.otherwise = otherwise
        self.observer = observer

    def __call__(self, account: AccountConfig, conn: ConnectionInfo) -> Delivery:
        """The delivery for ``account`` on this connection."""
        if account.send_via == "graph":
            return GraphDelivery(account, conn, client=self.service.client_for(account), limits=self.limits,
                                 observer=self.observer)
        return self.otherwise(account, conn)

    async def close(self) -> None:
        """Release the live forwarding's shared parts (the Graph service is closed by its owner)."""
        await self.otherwise.close()

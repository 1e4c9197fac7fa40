"""The local SMTP side of the relay, as aiosmtpd handler hooks: a thin adapter.

Local logins (AUTH PLAIN/LOGIN, or a trusted client address at MAIL) select an account; from then
on each hook hands the client's command to the connection's `relay.smtp.delivery.Delivery` (made
per account by a `DeliveryFactory`; by default `relay.smtp.forward.LiveForwarding`, which runs
the pure transaction core `relay.smtp.transaction` against the upstream) and sends the reply
value it gets back. What stays here is what belongs to the local side: who may log in and send,
EHLO keywords, address syntax, and aiosmtpd's envelope bookkeeping.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from relay.config.model import AccountConfig, RelayConfig
from relay.errors import ProtocolInputError
from relay.localauth import shown_username
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.sasl import decode_login_field, decode_plain
from relay.sender_policy import sender_refusal
from relay.smtp import replies
from relay.smtp.delivery import ConnectionInfo, ContentSink, Delivery, DeliveryFactory
from relay.smtp.forward import LiveForwarding
from relay.smtp.pool import UpstreamPool
from relay.smtp.reply import SmtpReply
from relay.smtp.session import ConnectionState, RelaySMTP
from relay.tokens.source import TokenSource

log = logging.getLogger("relay.smtp")

NULL_SENDER = "<>"  # RelaySMTP's form of the null reverse-path MAIL FROM:<> (bounces, DSNs)
_USERNAME_B64 = "VXNlcm5hbWU6"  # "Username:"
_PASSWORD_B64 = "UGFzc3dvcmQ6"  # noqa: S105 - the base64 of the prompt "Password:"


class RelayHandler:
    """aiosmtpd handler: local AUTH, then each command to the account's delivery."""

    def __init__(self, config: RelayConfig, tokens: TokenSource, authenticator: Any,
                 *, hostname: str = "localhost", deliveries: DeliveryFactory | None = None) -> None:
        self.config = config
        self.authenticator = authenticator
        self.hostname = hostname
        self.limits = config.limits
        self.deliveries: DeliveryFactory = deliveries or LiveForwarding(config, tokens)
        self._observer: RelayObserver = NULL_OBSERVER

    @property
    def observer(self) -> RelayObserver:
        """Where sessions, logins and messages are reported (relay.metrics; set by the server)."""
        return self._observer

    @observer.setter
    def observer(self, observer: RelayObserver) -> None:
        self._observer = observer
        if isinstance(self.deliveries, LiveForwarding):
            self.deliveries.observer = observer

    @property
    def pool(self) -> UpstreamPool | None:
        """Live forwarding's upstream session pool (None: pooling off, or another delivery)."""
        return self.deliveries.pool if isinstance(self.deliveries, LiveForwarding) else None

    async def close(self) -> None:
        """The listener stopped: let the deliveries release what they share (pooled sessions)."""
        await self.deliveries.close()

    # --- greeting and capabilities --------------------------------------------------------------

    def _auth_allowed(self, server: RelaySMTP) -> bool:
        return bool(self.authenticator.plaintext_auth_allowed(
            self.config.listen.smtp, server.state.client_ip, server.tls_active))

    async def handle_EHLO(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Advertise SIZE (never above the upstream's), and AUTH only where plaintext is allowed."""
        session.host_name = hostname
        await self._reset(server)
        delivery = server.state.delivery
        caps = delivery.path_capabilities() if delivery is not None else None
        size = delivery.size_limit() if delivery is not None else self.limits.max_message_bytes
        out = []
        for line in responses:
            if line.startswith("250-AUTH") and not self._auth_allowed(server):
                continue
            if caps is not None and ((line == "250-8BITMIME" and not caps.eight_bit_mime)
                                     or (line == "250-SMTPUTF8" and not caps.smtputf8)):
                continue  # only what the path end to end supports, once the upstream is known
            out.append(f"250-SIZE {size}" if line.startswith("250-SIZE") else line)
        return out

    async def handle_HELO(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        """Plain HELO: no extensions, same policy."""
        session.host_name = hostname
        await self._reset(server)
        return replies.helo(self.hostname).wire

    def handle_STARTTLS(self, server: RelaySMTP, session: Session, envelope: Envelope) -> bool:
        """RFC 3207: after TLS starts everything learnt before is forgotten (login, upstream)."""
        server.state.account = None
        self._end_delivery(server.state)
        return True

    # --- local AUTH -----------------------------------------------------------------------------

    async def handle_AUTH(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          args: list[str]) -> str:
        """AUTH PLAIN / LOGIN against the local users (aiosmtpd already checked EHLO and syntax)."""
        if envelope.mail_from is not None:
            return replies.AUTH_IN_TRANSACTION.wire  # RFC 4954 section 4
        if not self._auth_allowed(server):
            return replies.ENCRYPTION_REQUIRED.wire
        credentials = await self._read_credentials(server, args)
        if isinstance(credentials, SmtpReply):
            return credentials.wire
        username, password = credentials
        state = server.state
        with server.busy():
            account = await self.authenticator.authenticate(username, password, state.client_ip)
        if account is None:
            log.info("smtp %s: failed login for %s from %s", state.session_id,
                     shown_username(username, known=self.config.account_by_username(username) is not None),
                     state.client_address,
                     extra={"session": state.session_id, "client": state.client_address,
                            "protocol": "smtp", "outcome": "auth_failed"})
            self.observer.local_auth_failed("smtp")
            state.outcome = "auth_failed"
            return replies.AUTH_INVALID.wire
        state.outcome = "ok"
        session.authenticated = True
        state.account = account
        if state.delivery is not None and state.delivery.account.name != account.name:
            self._end_delivery(state)  # a trusted client's session must not carry this login's mail
        return replies.AUTH_OK.wire

    async def _read_credentials(self, server: RelaySMTP, args: list[str]) -> tuple[str, str] | SmtpReply:
        """Username and password of AUTH PLAIN / LOGIN (prompting as needed), or the refusal."""
        mechanism = args[0].upper()
        try:
            if mechanism == "PLAIN":
                raw = args[1] if len(args) > 1 else await server.read_auth_line("")
                if raw == b"*":
                    return replies.AUTH_CANCELLED
                creds = decode_plain(raw)
                if creds.authzid and creds.authzid != creds.username:
                    return replies.AUTH_INVALID
                return creds.username, creds.password
            if mechanism == "LOGIN":
                raw = args[1] if len(args) > 1 else await server.read_auth_line(_USERNAME_B64)
                if raw == b"*":
                    return replies.AUTH_CANCELLED
                username = decode_login_field(raw, "username")
                raw = await server.read_auth_line(_PASSWORD_B64)
                if raw == b"*":
                    return replies.AUTH_CANCELLED
                return username, decode_login_field(raw, "password")
        except ProtocolInputError as exc:
            return replies.syntax_error(exc)
        except ValueError:
            return replies.LINE_TOO_LONG_COMMAND
        return replies.AUTH_MECHANISM_UNKNOWN

    # --- transaction ----------------------------------------------------------------------------

    async def handle_MAIL(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        """MAIL: who sends (login or trusted client), then the delivery's verdict."""
        state = server.state
        account = self._sending_account(state)
        if isinstance(account, SmtpReply):
            return account.wire
        if not address.isascii() and not _is_utf8(address):
            return replies.BAD_SENDER_ADDRESS.wire
        if (refusal := sender_refusal(account, address)) is not None:  # accounts.NAME.allowed_senders
            return refusal
        if account.envelope_sender == "rewrite":
            sender = account.mailbox
        else:
            sender = "" if address == NULL_SENDER else address  # mail_command() adds the <>
        delivery = state.delivery or self._delivery(server, account)
        with server.busy():
            reply = await delivery.mail(sender, _parse_mail_options(mail_options))
        if reply.is_positive:
            envelope.mail_from = address  # a hook returning a reply records the MAIL itself
            envelope.mail_options.extend(mail_options)
        return reply.wire

    async def handle_RCPT(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        """RCPT: this recipient's reply from the delivery."""
        if address == NULL_SENDER:
            return replies.NULL_RECIPIENT.wire
        if not address.isascii() and not _is_utf8(address):
            return replies.BAD_RECIPIENT_ADDRESS.wire
        delivery = server.state.delivery
        if delivery is None:
            return replies.UPSTREAM_CONNECTION_LOST.wire
        with server.busy():
            reply = await delivery.rcpt(address)
        if reply.is_positive:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply.wire

    async def open_data(self, server: RelaySMTP) -> ContentSink | SmtpReply:
        """DATA: the sink the content streams into, at once (the client gets our 354 without
        waiting for the upstream), or the refusal; the reply after the final dot decides."""
        delivery = server.state.delivery
        if delivery is None:
            return replies.UPSTREAM_CONNECTION_LOST
        return await delivery.open_content()  # answers at once (ConnectionInfo.busy for waits)

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        """RSET: the delivery abandons its transaction."""
        await self._reset(server)
        return replies.OK.wire

    async def handle_QUIT(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        """QUIT: the delivery ends politely (QUIT upstream, or the session back to the pool)."""
        delivery = server.state.delivery
        if delivery is not None:
            with server.busy():
                await delivery.quit()
        return replies.BYE.wire

    async def handle_exception(self, error: Exception) -> str:
        """A bug, not a client error: log it and answer 4xx so the client keeps the message."""
        log.error("smtp: unexpected error in session: %s", error, exc_info=error)
        return replies.LOCAL_ERROR.wire

    def connection_closed(self, server: RelaySMTP) -> None:
        """The client is gone: abandon any transaction, log the session summary."""
        state = server.state
        self._end_delivery(state)
        account = state.account.name if state.account else "-"
        duration_ms = round((time.monotonic() - state.started) * 1000)
        self.observer.session_ended("smtp", state.account.name if state.account else None, state.outcome)
        log.info("smtp session %s end: account=%s client=%s messages=%d bytes=%d last_upstream=%r",
                 state.session_id, account, state.client_address, state.messages, state.bytes,
                 state.last_upstream_reply,
                 extra={"account": account, "session": state.session_id, "client": state.client_address,
                        "protocol": "smtp", "outcome": state.outcome, "messages": state.messages,
                        "upstream_reply": state.last_upstream_reply, "duration_ms": duration_ms,
                        "bytes": state.bytes})

    # --- helpers --------------------------------------------------------------------------------

    def _sending_account(self, state: ConnectionState) -> AccountConfig | SmtpReply:
        """The logged-in (or trusted-client) account that may send, or the client's refusal."""
        account = state.account
        if account is None:
            account = self.authenticator.trusted_account_for(state.client_ip)
            if account is None:
                return replies.AUTH_REQUIRED
            state.account = account
        if not account.can_send:
            return replies.account_cannot_send(account.name)
        return account

    def _delivery(self, server: RelaySMTP, account: AccountConfig) -> Delivery:
        """The connection's delivery for ``account`` (made at its first MAIL)."""
        state = server.state
        delivery = state.delivery
        if delivery is None:
            conn = ConnectionInfo(state.session_id, state.client_address, self.hostname, server.busy)
            delivery = state.delivery = self.deliveries(account, conn)
        return delivery

    def _end_delivery(self, state: ConnectionState) -> None:
        """Forget the connection's delivery (STARTTLS, another login); keep its counts for the log."""
        delivery, state.delivery = state.delivery, None
        if delivery is not None:
            messages, size, last = delivery.summary()
            state.messages += messages
            state.bytes += size
            state.last_upstream_reply = last or state.last_upstream_reply
            if getattr(delivery, "failed", False):
                state.outcome = "upstream_error"
            delivery.close()

    async def _reset(self, server: RelaySMTP) -> None:
        delivery = server.state.delivery
        if delivery is not None:
            with server.busy():
                await delivery.reset()


def _is_utf8(address: str) -> bool:
    """False for an address with bytes that are not UTF-8 (aiosmtpd keeps them as surrogates)."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_mail_options(mail_options: list[str]) -> dict[str, str]:
    """``["SIZE=12", "BODY=8BITMIME", "SMTPUTF8"]`` -> ``{"SIZE": "12", ...}`` (aiosmtpd validated)."""
    out = {}
    for option in mail_options:
        key, _, value = option.partition("=")
        out[key.upper()] = value.upper() if key.upper() == "BODY" else value
    return out

"""The SMTP relay policy, as aiosmtpd handler hooks.

Local logins (AUTH PLAIN/LOGIN, or a trusted client address) select an account; the account's
upstream session is opened lazily at the first MAIL and reused for later messages. RCPT and the
message are forwarded as they arrive and the client gets the upstream's own reply, so it sees 250
for a message only when the upstream accepted it. Every failure of ours or of the upstream is a
4xx, logged once with the account, the upstream reply and the fix. With ``upstream_pool.enabled``
the session is instead lent by `relay.smtp.pool.UpstreamPool` at MAIL and given back when the
transaction is over.

Delayed sender verdict (like Postfix's ``smtpd_delay_reject``): when the upstream offers
PIPELINING (and the endpoint's ``pipelining`` setting is on), MAIL is checked and answered locally
and goes upstream in one write with the first RCPT; an upstream refusal of MAIL is then the reply
to every RCPT of the transaction. The message content goes with DATA, or as BDAT chunks when the
upstream also offers CHUNKING (`relay.smtp.datasink`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from relay.config.model import AccountConfig, RelayConfig
from relay.errors import (
    ProtocolInputError,
    RelayError,
    UpstreamAuthRejected,
    UpstreamBusy,
    UpstreamUnavailable,
)
from relay.metrics import NULL_OBSERVER, RelayObserver
from relay.sasl import decode_login_field, decode_plain
from relay.secret import Secret
from relay.sender_policy import sender_refusal
from relay.smtp.datasink import UpstreamBdatSink, UpstreamDataSink, note
from relay.smtp.failures import (
    UPSTREAM_CONNECTION_LOST,
    client_reply_for_upstream,
    describe_failure,
    reply_for_error,
)
from relay.smtp.pool import UpstreamPool
from relay.smtp.protocol import ConnectionState, PendingMail, RelaySMTP
from relay.smtp.reply import SmtpReply
from relay.smtp.upstream import UpstreamSmtpSession, mail_command, rcpt_command
from relay.tokens.source import TokenSource
from relay.upstream_slots import UpstreamSlots, smtp_slot_key

log = logging.getLogger("relay.smtp")

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
SENDER_OK = "250 2.1.0 Sender OK"  # a delayed MAIL: the upstream's verdict comes at the first RCPT
_LOGGED_OUT = (421, 530, 535)  # MAIL replies of a kept session that lost its login
NULL_SENDER = "<>"  # RelaySMTP's form of the null reverse-path MAIL FROM:<> (bounces, DSNs)
_USERNAME_B64 = "VXNlcm5hbWU6"  # "Username:"
_PASSWORD_B64 = "UGFzc3dvcmQ6"  # noqa: S105 - the base64 of the prompt "Password:"


class RelayHandler:
    """aiosmtpd handler: local AUTH, forwarding to the account's upstream, error mapping."""

    observer: RelayObserver = NULL_OBSERVER  # relay.metrics: set by the server when metrics are on

    def __init__(self, config: RelayConfig, tokens: TokenSource, authenticator: Any,
                 *, hostname: str = "localhost") -> None:
        self.config = config
        self.tokens = tokens
        self.authenticator = authenticator
        self.hostname = hostname
        self.limits = config.limits
        self.slots = UpstreamSlots(self.limits.upstream_slot_wait_s)  # per-mailbox session cap
        self.pool: UpstreamPool | None = None
        if config.upstream_pool.enabled:
            self.pool = UpstreamPool(config.upstream_pool, tokens,
                                     wait_timeout_s=self.limits.upstream_connect_timeout_s)

    async def close(self) -> None:
        """Close the pooled upstream sessions (QUIT), if pooling is on."""
        if self.pool is not None:
            await self.pool.close()

    # --- greeting and capabilities --------------------------------------------------------------

    def _auth_allowed(self, server: RelaySMTP) -> bool:
        return bool(self.authenticator.plaintext_auth_allowed(
            self.config.listen.smtp, server.state.client_ip, server.tls_active))

    async def handle_EHLO(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Advertise SIZE (never above the upstream's), and AUTH only where plaintext is allowed."""
        session.host_name = hostname
        await self._reset_transaction(server)
        out = []
        caps = server.state.upstream.capabilities if server.state.upstream else None
        for line in responses:
            if line.startswith("250-AUTH") and not self._auth_allowed(server):
                continue
            if caps is not None and ((line == "250-8BITMIME" and not caps.eight_bit_mime)
                                     or (line == "250-SMTPUTF8" and not caps.smtputf8)):
                continue  # only what the path end to end supports, once the upstream is known
            if line.startswith("250-SIZE"):
                out.append(f"250-SIZE {self._size_limit(server.state)}")
            else:
                out.append(line)
        return out

    async def handle_HELO(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        """Plain HELO: no extensions, same policy."""
        session.host_name = hostname
        await self._reset_transaction(server)
        return f"250 {self.hostname}"

    def handle_STARTTLS(self, server: RelaySMTP, session: Session, envelope: Envelope) -> bool:
        """RFC 3207: after TLS starts everything learnt before is forgotten (login, upstream)."""
        state = server.state
        state.account = None
        self.drop_upstream(state)
        return True

    def _size_limit(self, state: ConnectionState) -> int:
        up = state.upstream
        if up is not None:
            return up.capabilities.effective_size_limit(self.limits.max_message_bytes)
        return self.limits.max_message_bytes

    # --- local AUTH -----------------------------------------------------------------------------

    async def handle_AUTH(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          args: list[str]) -> str:
        """AUTH PLAIN / LOGIN against the local users (aiosmtpd already checked EHLO and syntax)."""
        if not self._auth_allowed(server):
            return ENCRYPTION_REQUIRED
        mechanism = args[0].upper()
        try:
            if mechanism == "PLAIN":
                raw = args[1] if len(args) > 1 else await server.read_auth_line("")
                if raw == b"*":
                    return "501 5.7.0 Authentication cancelled"
                creds = decode_plain(raw)
                if creds.authzid and creds.authzid != creds.username:
                    return AUTH_INVALID
                username, password = creds.username, creds.password
            elif mechanism == "LOGIN":
                raw = args[1] if len(args) > 1 else await server.read_auth_line(_USERNAME_B64)
                if raw == b"*":
                    return "501 5.7.0 Authentication cancelled"
                username = decode_login_field(raw, "username")
                raw = await server.read_auth_line(_PASSWORD_B64)
                if raw == b"*":
                    return "501 5.7.0 Authentication cancelled"
                password = decode_login_field(raw, "password")
            else:
                return "504 5.5.4 Unrecognized authentication type"
        except ProtocolInputError as exc:
            return f"501 5.5.2 {exc}"
        except ValueError:
            return "500 5.5.2 Line too long"
        with server.busy():
            account = await self.authenticator.authenticate(username, password, server.state.client_ip)
        if account is None:
            log.info("smtp %s: failed login for %r from %s", server.state.session_id, username,
                     server.state.client_address,
                     extra={"session": server.state.session_id, "client": server.state.client_address,
                            "protocol": "smtp", "outcome": "auth_failed"})
            self.observer.local_auth_failed("smtp")
            server.state.outcome = "auth_failed"
            return AUTH_INVALID
        server.state.outcome = "ok"
        session.authenticated = True
        server.state.account = account
        return AUTH_OK

    # --- transaction ----------------------------------------------------------------------------

    async def handle_MAIL(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        """Check MAIL locally and get the account's upstream session (opened here if needed). With
        PIPELINING answer 250 at once and send MAIL with the first RCPT, else forward it now."""
        state = server.state
        account = self._sending_account(state)
        if isinstance(account, str):
            return account
        if (refusal := sender_refusal(account, address)) is not None:  # accounts.NAME.allowed_senders
            return refusal
        options = _parse_mail_options(mail_options)
        if account.envelope_sender == "rewrite":
            sender = account.mailbox
        else:
            sender = "" if address == NULL_SENDER else address  # mail_command() adds the <>
        state.mail_refused = None
        with server.busy():
            pending = await self._prepare_mail(state, account, sender, options)
            if isinstance(pending, str):
                return pending
            assert state.upstream is not None
            if state.upstream.pipelining:
                state.pending_mail = pending
                state.upstream_broken = False
                _accept_sender(envelope, address, mail_options)
                return SENDER_OK
            result = await self._send_mail(state, account, pending)
        if isinstance(result, str):
            return result
        reply = result[0]
        note(state, reply)
        if reply.is_positive:
            state.upstream_broken = False
            _accept_sender(envelope, address, mail_options)
        else:
            self._mail_refused(state, reply, None)
        return client_reply_for_upstream(reply).render()

    async def handle_RCPT(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        """Forward RCPT TO (the first one together with the delayed MAIL); the client gets this
        recipient's upstream reply, or the upstream's refusal of the delayed MAIL."""
        if address == NULL_SENDER:
            return "501 5.1.3 The null address <> is not a valid recipient"
        state = server.state
        if state.mail_refused is not None:
            return state.mail_refused
        try:
            line = rcpt_command(address)
        except ProtocolInputError as exc:
            return f"501 5.5.2 {exc}"
        with server.busy():
            if state.pending_mail is not None:
                reply = await self._first_rcpt(state, line)
            else:
                reply = await self._rcpt(state, line)
        if isinstance(reply, str):
            return reply
        note(state, reply)
        if reply.is_positive:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return client_reply_for_upstream(reply).render()

    async def open_data(self, server: RelaySMTP) -> str | UpstreamDataSink | UpstreamBdatSink:
        """Return the sink the content streams into, at once: the client gets our 354 without
        waiting for the upstream (one upstream round trip less per message).

        With CHUNKING nothing goes upstream yet: the content follows as BDAT chunks. Otherwise DATA
        is sent now and the sink reads the upstream's reply to it before it forwards any content;
        if the upstream refused DATA, the content is read and dropped and the client gets that
        refusal as its reply to the final dot (RFC 5321 4.2.5 / 3.3: the reply after the data
        decides). Either way the client sees 250 only when the upstream accepted the content.
        """
        state = server.state
        up = state.upstream
        if state.upstream_broken or up is None or not state.in_transaction:
            return UPSTREAM_CONNECTION_LOST.render()
        limit = self._size_limit(state)
        if up.chunking:
            return UpstreamBdatSink(self, server, up, limit)
        try:
            up.data_send()
        except (RelayError, OSError) as exc:
            return self.broken(state, exc).render()
        return UpstreamDataSink(self, server, up, limit)

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        """Forward RSET when an upstream transaction is open."""
        await self._reset_transaction(server)
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        """Close the upstream session politely (pooling: give it back), then say goodbye."""
        if self.pool is not None:
            await self._reset_transaction(server)
        up, server.state.upstream = server.state.upstream, None
        if up is not None:
            with server.busy():
                await up.quit()
        return "221 2.0.0 Bye"

    async def handle_exception(self, error: Exception) -> str:
        """A bug, not a client error: log it and answer 4xx so the client keeps the message."""
        log.error("smtp: unexpected error in session: %s", error, exc_info=error)
        return "451 4.3.0 Local error in processing, try again later"

    def connection_closed(self, server: RelaySMTP) -> None:
        """The client is gone: abandon any upstream transaction, log the session summary."""
        state = server.state
        state.pending_mail = None  # never sent upstream: it leaves the session clean
        self.release_upstream(state)  # pooling: a session without an open transaction is reusable
        self.drop_upstream(state)
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

    # --- MAIL and RCPT upstream -----------------------------------------------------------------

    def _sending_account(self, state: ConnectionState) -> AccountConfig | str:
        """The logged-in (or trusted-client) account that may send, or the client's refusal."""
        account = state.account
        if account is None:
            account = self.authenticator.trusted_account_for(state.client_ip)
            if account is None:
                return AUTH_REQUIRED
            state.account = account
        if account.smtp is None:
            return f"550 5.7.1 Account {account.name} is not configured to send mail"
        return account

    async def _prepare_mail(self, state: ConnectionState, account: AccountConfig, sender: str,
                            options: dict[str, str], *, fresh: bool = False) -> PendingMail | str:
        """Get the upstream session (``fresh``: a new one; a kept one that died is replaced once),
        check the MAIL options against its capabilities and the MAIL line itself. Returns the MAIL
        to send, or the client's refusal (connection and login failures included)."""
        reused = state.upstream is not None
        try:
            up = await self._upstream(state, account, fresh=fresh)
        except (RelayError, OSError) as exc:
            self.drop_upstream(state)
            if reused and not fresh and _died_while_idle(exc):
                return await self._prepare_mail(state, account, sender, options, fresh=True)
            return self._failure(state, account, exc).render()
        reused = reused or (self.pool is not None and self.pool.was_reused(up))
        refusal = self._check_capabilities(up, options)
        if refusal is None:
            try:
                mail_command(sender, self._mail_params(up, options))
            except ProtocolInputError as exc:
                refusal = f"501 5.5.2 {exc}"
        if refusal is not None:
            self.release_upstream(state)
            return refusal
        return PendingMail(sender, options, reused=reused and not fresh)

    async def _send_mail(self, state: ConnectionState, account: AccountConfig, pending: PendingMail,
                         rcpt: bytes | None = None) -> tuple[SmtpReply, SmtpReply | None] | str:
        """Send MAIL (with the first RCPT line pipelined, when given) on the connection's session.

        A reused session that turns out dead or logged out (a kept session's login can expire) is
        replaced by a fresh one and the commands are sent once more. Returns the MAIL and RCPT
        replies, or the client's reply for a failure.
        """
        retry = pending.reused
        while True:
            up = state.upstream
            assert up is not None
            mail = mail_command(pending.sender, self._mail_params(up, pending.options))
            state.in_transaction = True  # from here on the upstream may hold an open transaction
            try:
                replies = (await up.send_command(mail, "MAIL"), None) if rcpt is None \
                    else await up.mail_rcpt(mail, rcpt)
            except (RelayError, OSError) as exc:
                self.drop_upstream(state)
                if not (retry and _died_while_idle(exc)):
                    return self._failure(state, account, exc).render()
            else:
                state.in_transaction = replies[0].is_positive
                if not (retry and replies[0].code in _LOGGED_OUT):
                    return replies
                self.drop_upstream(state)  # the kept session lost its login: start over
            retry = False
            prepared = await self._prepare_mail(state, account, pending.sender, pending.options, fresh=True)
            if isinstance(prepared, str):
                return prepared

    async def _first_rcpt(self, state: ConnectionState, rcpt: bytes) -> SmtpReply | str:
        """Send the delayed MAIL with this RCPT; a refused MAIL becomes every RCPT's reply."""
        pending, state.pending_mail = state.pending_mail, None
        assert pending is not None and state.account is not None
        result = await self._send_mail(state, state.account, pending, rcpt)
        if isinstance(result, str):
            state.mail_refused = result
            return result
        mail, rcpt_reply = result
        if mail.is_positive:
            assert rcpt_reply is not None
            return rcpt_reply
        note(state, mail)
        self._mail_refused(state, mail, rcpt_reply)
        state.mail_refused = client_reply_for_upstream(mail).render()
        return state.mail_refused

    async def _rcpt(self, state: ConnectionState, rcpt: bytes) -> SmtpReply | str:
        """A later RCPT, alone: its reply is this recipient's upstream verdict."""
        up = state.upstream
        if state.upstream_broken or up is None or not state.in_transaction:
            return UPSTREAM_CONNECTION_LOST.render()
        try:
            return await up.send_command(rcpt, "RCPT")
        except (RelayError, OSError) as exc:
            return self.broken(state, exc).render()

    def _mail_refused(self, state: ConnectionState, mail: SmtpReply, rcpt: SmtpReply | None) -> None:
        """The upstream refused MAIL, so no transaction is open: give the session back, unless it
        closed (421, or no RCPT reply came) or accepted the pipelined RCPT anyway (state unknown)."""
        state.in_transaction = False
        up = state.upstream
        if mail.code == 421 or up is None or not up.connected or (rcpt is not None and rcpt.is_positive):
            self.drop_upstream(state)
        else:
            self.release_upstream(state)

    # --- upstream plumbing ----------------------------------------------------------------------

    async def _upstream(self, state: ConnectionState, account: AccountConfig, *,
                        fresh: bool = False) -> UpstreamSmtpSession:
        """The connected, authenticated upstream session for the account: the connection's own, else
        one lent by the pool (``fresh``: not an idle one), else a new one."""
        state.pending_mail = None
        if state.upstream is not None and state.upstream.connected:
            if state.in_transaction:
                await state.upstream.rset()
                state.in_transaction = False
            return state.upstream
        self.drop_upstream(state)
        if self.pool is not None:
            up = await self.pool.acquire(account, self._open_upstream, fresh=fresh)
        else:
            up, _ = await self._open_upstream(account)
        state.upstream = up
        return up

    async def _open_upstream(self, account: AccountConfig) -> tuple[UpstreamSmtpSession, Secret]:
        """Take a slot under the mailbox's session cap, then log in; the slot is freed on close."""
        assert account.smtp is not None
        slot = await self.slots.acquire(smtp_slot_key(account.smtp.host, account.mailbox),
                                        account.max_upstream_sessions, account=account.name,
                                        setting=f"accounts.{account.name}.max_upstream_sessions")
        try:
            up, token = await self._open_upstream_session(account)
        except BaseException:
            slot.release()
            raise
        up.on_close = slot.release
        return up, token

    async def _open_upstream_session(self, account: AccountConfig) -> tuple[UpstreamSmtpSession, Secret]:
        """Log in upstream with the account's token (refreshed once if refused); return the token."""
        token = await self.tokens.get_token(account.name)
        try:
            up = await self._login(account, token)
        except UpstreamAuthRejected as first:
            log.debug("account %s: upstream refused the token (%s); forcing a refresh",
                      account.name, first.reply)
            token = await self.tokens.force_refresh(account.name, rejected=token)
            up = await self._login(account, token)
        return up, token

    async def _login(self, account: AccountConfig, token: Any) -> UpstreamSmtpSession:
        assert account.smtp is not None
        up = UpstreamSmtpSession(
            account.smtp, account=account.name, local_hostname=self.hostname,
            connect_timeout_s=self.limits.upstream_connect_timeout_s,
            command_timeout_s=self.limits.upstream_command_timeout_s,
            data_timeout_s=self.limits.upstream_data_timeout_s,
        )
        started = time.monotonic()
        try:
            await up.connect()
            try:
                await up.authenticate(account.mailbox, token)
            except BaseException:
                up.abort()
                raise
        except UpstreamAuthRejected as exc:
            self.observer.upstream_login(account.name, "smtp", time.monotonic() - started,
                                         _reply_code(exc.reply) or 535)
            raise
        except (RelayError, OSError):
            self.observer.upstream_login(account.name, "smtp", time.monotonic() - started, None)
            raise
        self.observer.upstream_login(account.name, "smtp", time.monotonic() - started, 235)
        return up

    def _check_capabilities(self, up: UpstreamSmtpSession, options: dict[str, str]) -> str | None:
        caps = up.capabilities
        declared = options.get("SIZE")
        if declared and int(declared) > caps.effective_size_limit(self.limits.max_message_bytes):
            return TOO_BIG
        if "SMTPUTF8" in options and not caps.smtputf8:
            return "555 5.6.7 SMTPUTF8 is not supported by the upstream server"
        if options.get("BODY") == "8BITMIME" and not caps.eight_bit_mime:
            return "554 5.6.3 8BITMIME is not supported by the upstream server"
        return None

    @staticmethod
    def _mail_params(up: UpstreamSmtpSession, options: dict[str, str]) -> list[str]:
        caps = up.capabilities
        params = []
        if "SIZE" in options and caps.size is not None:
            params.append(f"SIZE={options['SIZE']}")
        if "BODY" in options and caps.eight_bit_mime:
            params.append(f"BODY={options['BODY']}")
        if "SMTPUTF8" in options:
            params.append("SMTPUTF8")
        return params

    async def _reset_transaction(self, server: RelaySMTP) -> None:
        state = server.state
        state.upstream_broken = False
        state.pending_mail = None  # never sent upstream: nothing to reset there
        state.mail_refused = None
        if state.upstream is not None and state.in_transaction:
            try:
                with server.busy():
                    reply = await state.upstream.rset()
            except (RelayError, OSError):
                self.drop_upstream(state)
            else:
                state.in_transaction = False
                if reply.code != 250 and self.pool is not None:
                    self.drop_upstream(state)  # not known to be clean: never pooled
        self.release_upstream(state)

    def _failure(self, state: ConnectionState, account: AccountConfig, exc: BaseException) -> SmtpReply:
        """Log one line naming the account, the upstream reply and the fix; return the 4xx."""
        explanation = describe_failure(exc, account)
        log.warning("smtp session %s: %s", state.session_id, explanation,
                    extra={"account": account.name, "session": state.session_id,
                           "client": state.client_address, "protocol": "smtp",
                           "outcome": "upstream_error", "upstream_reply": getattr(exc, "reply", None)})
        state.outcome = "upstream_error"
        self.observer.upstream_failure(account.name, "smtp", explanation)
        reply = reply_for_error(exc)
        state.last_upstream_reply = getattr(exc, "reply", None) or reply.one_line()
        return reply

    def broken(self, state: ConnectionState, exc: BaseException) -> SmtpReply:
        """The upstream failed mid-transaction: drop it and answer 4xx until the next MAIL."""
        assert state.account is not None
        self.drop_upstream(state)
        state.upstream_broken = True
        self._failure(state, state.account, exc)
        return reply_for_error(exc, connected=True)

    def drop_upstream(self, state: ConnectionState) -> None:
        """Close the connection's upstream session (pooling: free its slot); never reused."""
        up, state.upstream = state.upstream, None
        state.in_transaction = False
        state.pending_mail = None
        if up is not None:
            if self.pool is not None:
                self.pool.discard(up)  # aborts it and frees its slot
            else:
                up.abort()

    def release_upstream(self, state: ConnectionState) -> None:
        """Pooling: the transaction is over, lend the session back (no-op while one is open)."""
        if (self.pool is not None and state.upstream is not None and not state.in_transaction
                and state.pending_mail is None):
            up, state.upstream = state.upstream, None
            self.pool.release(up)


def _accept_sender(envelope: Envelope, address: str, mail_options: list[str]) -> None:
    """What aiosmtpd records for an accepted MAIL (a hook returning a reply must do it itself)."""
    envelope.mail_from = address
    envelope.mail_options.extend(mail_options)


def _reply_code(reply: str | None) -> int | None:
    """The numeric code at the start of an upstream reply text, if any."""
    head = (reply or "")[:3]
    return int(head) if head.isdigit() else None


def _died_while_idle(exc: BaseException) -> bool:
    """A failure that on a reused session means it died while idle: one fresh try is safe."""
    return isinstance(exc, UpstreamUnavailable) and not isinstance(exc, UpstreamBusy)




def _parse_mail_options(mail_options: list[str]) -> dict[str, str]:
    """``["SIZE=12", "BODY=8BITMIME", "SMTPUTF8"]`` -> ``{"SIZE": "12", ...}`` (aiosmtpd validated)."""
    out = {}
    for option in mail_options:
        key, _, value = option.partition("=")
        out[key.upper()] = value.upper() if key.upper() == "BODY" else value
    return out

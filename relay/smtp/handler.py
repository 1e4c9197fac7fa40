"""The SMTP relay policy, as aiosmtpd handler hooks.

Local logins (AUTH PLAIN/LOGIN, or a trusted client address) select an account; the account's
upstream session is opened lazily at the first MAIL and reused for later messages. MAIL, RCPT and
DATA are forwarded as they arrive and the client gets the upstream's own reply, so it sees 250 only
when the upstream accepted. Every failure of ours or of the upstream is a 4xx, logged once with
the account, the upstream reply and the fix. With ``upstream_pool.enabled`` the session is instead
lent by `relay.smtp.pool.UpstreamPool` at MAIL and given back when the transaction is over.
"""

from __future__ import annotations

import logging
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
from relay.sasl import decode_login_field, decode_plain
from relay.secret import Secret
from relay.smtp.dataframe import DataFramer, DataProblem
from relay.smtp.failures import (
    UPSTREAM_CONNECTION_LOST,
    client_reply_for_upstream,
    describe_failure,
    reply_for_error,
)
from relay.smtp.pool import UpstreamPool
from relay.smtp.protocol import ConnectionState, RelaySMTP
from relay.smtp.reply import SmtpReply
from relay.smtp.upstream import UpstreamSmtpSession
from relay.tokens.source import TokenSource

log = logging.getLogger("relay.smtp")

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 998 octets + CRLF)"
BARE_LINE_END = ("554 5.6.0 Message refused: bare LF or bare CR in the content (RFC 5321 2.3.8); "
                 "end every line with CRLF")
_DATA_PROBLEM_REPLY = {DataProblem.TOO_BIG: TOO_BIG, DataProblem.LINE_TOO_LONG: LINE_TOO_LONG,
                       DataProblem.BARE_LINE_END: BARE_LINE_END}
NULL_SENDER = "<>"  # RelaySMTP's form of the null reverse-path MAIL FROM:<> (bounces, DSNs)
_USERNAME_B64 = "VXNlcm5hbWU6"  # "Username:"
_PASSWORD_B64 = "UGFzc3dvcmQ6"  # noqa: S105 - the base64 of the prompt "Password:"


class RelayHandler:
    """aiosmtpd handler: local AUTH, forwarding to the account's upstream, error mapping."""

    def __init__(self, config: RelayConfig, tokens: TokenSource, authenticator: Any,
                 *, hostname: str = "localhost") -> None:
        self.config = config
        self.tokens = tokens
        self.authenticator = authenticator
        self.hostname = hostname
        self.limits = config.limits
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
        self._drop_upstream(state)
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
                     server.state.client_address)
            return AUTH_INVALID
        session.authenticated = True
        server.state.account = account
        return AUTH_OK

    # --- transaction ----------------------------------------------------------------------------

    async def handle_MAIL(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        """Forward MAIL FROM to the account's upstream (opened here if needed)."""
        state = server.state
        account = state.account
        if account is None:
            account = self.authenticator.trusted_account_for(state.client_ip)
            if account is None:
                return AUTH_REQUIRED
            state.account = account
        if account.smtp is None:
            return f"550 5.7.1 Account {account.name} is not configured to send mail"
        options = _parse_mail_options(mail_options)
        if account.envelope_sender == "rewrite":
            sender = account.mailbox
        else:
            sender = "" if address == NULL_SENDER else address  # upstream.mail() adds the <>
        with server.busy():
            for attempt in (1, 2):
                reused = state.upstream is not None
                try:
                    up = await self._upstream(state, account, fresh=attempt == 2)
                    reused = reused or (self.pool is not None and self.pool.was_reused(up))
                    refusal = self._check_capabilities(up, options)
                    if refusal:
                        self._release_upstream(state)
                        return refusal
                    reply = await up.mail(sender, self._mail_params(up, options))
                except ProtocolInputError as exc:
                    self._release_upstream(state)
                    return f"501 5.5.2 {exc}"
                except (RelayError, OSError) as exc:
                    self._drop_upstream(state)
                    if (reused and attempt == 1 and isinstance(exc, UpstreamUnavailable)
                            and not isinstance(exc, UpstreamBusy)):
                        continue  # the kept session died while idle: one fresh try is safe
                    return self._failure(state, account, exc).render()
                if reused and attempt == 1 and reply.code in (421, 530, 535):
                    self._drop_upstream(state)  # the kept session lost its login: start over
                    continue
                break
        self._note(state, reply)
        if reply.is_positive:
            state.in_transaction = True
            state.upstream_broken = False
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        elif reply.code == 421 and self.pool is not None:
            self._drop_upstream(state)
        else:
            self._release_upstream(state)  # pooling: no transaction opened, lend the session back
        return client_reply_for_upstream(reply).render()

    async def handle_RCPT(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        """Forward RCPT TO; the client gets this recipient's upstream reply."""
        if address == NULL_SENDER:
            return "501 5.1.3 The null address <> is not a valid recipient"
        state = server.state
        up = state.upstream
        if state.upstream_broken or up is None or not state.in_transaction:
            return UPSTREAM_CONNECTION_LOST.render()
        try:
            with server.busy():
                reply = await up.rcpt(address)
        except ProtocolInputError as exc:
            return f"501 5.5.2 {exc}"
        except (RelayError, OSError) as exc:
            return self._broken(state, exc).render()
        self._note(state, reply)
        if reply.is_positive:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return client_reply_for_upstream(reply).render()

    async def open_data(self, server: RelaySMTP) -> str | UpstreamDataSink:
        """Send DATA upstream and return the sink the content streams into, at once.

        The client gets our 354 without waiting for the upstream's (one upstream round trip less
        per message); the sink reads the upstream's reply to DATA before it forwards any content.
        If the upstream refused DATA, the content is read and dropped and the client gets that
        refusal as its reply to the final dot (RFC 5321 4.2.5 / 3.3: the reply after the data
        decides). The client still sees 250 only when the upstream accepted the content.
        """
        state = server.state
        up = state.upstream
        if state.upstream_broken or up is None or not state.in_transaction:
            return UPSTREAM_CONNECTION_LOST.render()
        try:
            up.data_send()
        except (RelayError, OSError) as exc:
            return self._broken(state, exc).render()
        return UpstreamDataSink(self, server, up, self._size_limit(state))

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
        self._release_upstream(state)  # pooling: a session without an open transaction is reusable
        self._drop_upstream(state)
        account = state.account.name if state.account else "-"
        log.info("smtp session %s end: account=%s client=%s messages=%d bytes=%d last_upstream=%r",
                 state.session_id, account, state.client_address, state.messages, state.bytes,
                 state.last_upstream_reply)

    # --- upstream plumbing ----------------------------------------------------------------------

    async def _upstream(self, state: ConnectionState, account: AccountConfig, *,
                        fresh: bool = False) -> UpstreamSmtpSession:
        """The connected, authenticated upstream session for the account: the connection's own, else
        one lent by the pool (``fresh``: not an idle one), else a new one."""
        if state.upstream is not None and state.upstream.connected:
            if state.in_transaction:
                state.in_transaction = False
                await state.upstream.rset()
            return state.upstream
        self._drop_upstream(state)
        if self.pool is not None:
            up = await self.pool.acquire(account, self._open_upstream, fresh=fresh)
        else:
            up, _ = await self._open_upstream(account)
        state.upstream = up
        return up

    async def _open_upstream(self, account: AccountConfig) -> tuple[UpstreamSmtpSession, Secret]:
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
        await up.connect()
        try:
            await up.authenticate(account.mailbox, token)
        except BaseException:
            up.abort()
            raise
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
        if state.upstream is not None and state.in_transaction:
            state.in_transaction = False
            try:
                with server.busy():
                    if (await state.upstream.rset()).code != 250 and self.pool is not None:
                        self._drop_upstream(state)  # not known to be clean: never pooled
            except (RelayError, OSError):
                self._drop_upstream(state)
        self._release_upstream(state)

    def _failure(self, state: ConnectionState, account: AccountConfig, exc: BaseException) -> SmtpReply:
        """Log one line naming the account, the upstream reply and the fix; return the 4xx."""
        log.warning("smtp session %s: %s", state.session_id, describe_failure(exc, account))
        reply = reply_for_error(exc)
        state.last_upstream_reply = getattr(exc, "reply", None) or reply.one_line()
        return reply

    def _broken(self, state: ConnectionState, exc: BaseException) -> SmtpReply:
        """The upstream failed mid-transaction: drop it and answer 4xx until the next MAIL."""
        assert state.account is not None
        self._drop_upstream(state)
        state.upstream_broken = True
        self._failure(state, state.account, exc)
        return reply_for_error(exc, connected=True)

    def _drop_upstream(self, state: ConnectionState) -> None:
        up, state.upstream = state.upstream, None
        state.in_transaction = False
        if up is not None:
            if self.pool is not None:
                self.pool.discard(up)  # aborts it and frees its slot
            else:
                up.abort()

    def _release_upstream(self, state: ConnectionState) -> None:
        """Pooling: the transaction is over, lend the session back (no-op while one is open)."""
        if self.pool is not None and state.upstream is not None and not state.in_transaction:
            up, state.upstream = state.upstream, None
            self.pool.release(up)

    @staticmethod
    def _note(state: ConnectionState, reply: SmtpReply) -> None:
        state.last_upstream_reply = reply.one_line()


class UpstreamDataSink:
    """Streams one message's content to the upstream; the client's final reply comes from here."""

    def __init__(self, handler: RelayHandler, server: RelaySMTP, up: UpstreamSmtpSession,
                 max_bytes: int) -> None:
        self.handler = handler
        self.server = server
        self.up = up
        self.max_bytes = max_bytes
        self.error: BaseException | None = None
        self.abandoned = False
        self.refusal: SmtpReply | None = None  # the upstream's non-354 reply to DATA
        self._go_ahead_read = False

    async def _upstream_ready(self) -> bool:
        """Read the upstream's reply to DATA once; True when it was 354 (content may go)."""
        if not self._go_ahead_read:
            self._go_ahead_read = True
            try:
                with self.server.busy():
                    reply = await self.up.data_reply()
            except (RelayError, OSError) as exc:
                self.error = exc
                self.abandon()
                return False
            RelayHandler._note(self.server.state, reply)
            if reply.code != 354:
                # The upstream's transaction stays open for us: RSET before the next MAIL.
                self.refusal = reply
        return self.refusal is None and self.error is None and not self.abandoned

    async def write(self, wire_bytes: bytes) -> None:
        """Forward content; after an upstream failure keep reading the client but drop the bytes.

        Until the upstream's 354 has been read this waits for it (and so stops reading the
        client: what the client sent meanwhile stays in the socket buffers, bounded by TCP)."""
        if self.error is not None or self.abandoned or self.refusal is not None:
            return
        if not self._go_ahead_read and not await self._upstream_ready():
            return
        try:
            with self.server.busy():
                await self.up.data_write(wire_bytes)
        except (RelayError, OSError) as exc:
            self.error = exc
            self.abandon()

    def abandon(self) -> None:
        """Close the upstream without the final dot: the message is never delivered."""
        if not self.abandoned:
            self.abandoned = True
            state = self.server.state
            if state.upstream is self.up:
                self.handler._drop_upstream(state)
            else:
                self.up.abort()

    async def finish(self, framer: DataFramer, tail: bytes = b"") -> str:
        """Send ``tail`` (the content of the chunk that held the end of DATA) with the final dot
        and pass the upstream's reply on, or refuse (size, line, failure, or the upstream's
        refusal of DATA)."""
        state = self.server.state
        if framer.problem is not None:
            self.abandon()
            return _DATA_PROBLEM_REPLY[framer.problem]
        if self.error is None and not self.abandoned:
            await self._upstream_ready()  # an empty message: no write() read it yet
        if self.refusal is not None:
            return client_reply_for_upstream(self.refusal).render()
        if self.error is None:
            try:
                with self.server.busy():
                    reply = await self.up.data_finish(tail)
            except (RelayError, OSError) as exc:
                self.error = exc
        if self.error is not None:
            self.abandon()
            return self.handler._broken(state, self.error).render()
        state.in_transaction = False
        RelayHandler._note(state, reply)
        if reply.is_positive:
            state.messages += 1
            state.bytes += framer.received_bytes
        elif reply.code == 421:
            self.handler._drop_upstream(state)
        self.handler._release_upstream(state)  # pooling: the transaction is over
        return client_reply_for_upstream(reply).render()


def _parse_mail_options(mail_options: list[str]) -> dict[str, str]:
    """``["SIZE=12", "BODY=8BITMIME", "SMTPUTF8"]`` -> ``{"SIZE": "12", ...}`` (aiosmtpd validated)."""
    out = {}
    for option in mail_options:
        key, _, value = option.partition("=")
        out[key.upper()] = value.upper() if key.upper() == "BODY" else value
    return out

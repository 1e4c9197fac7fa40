"""The upstream SMTP login: SASL XOAUTH2 on an `relay.smtp.upstream.UpstreamSmtpSession`."""

from __future__ import annotations

from typing import Protocol

from relay.errors import UpstreamAuthRejected, UpstreamProtocolError, UpstreamUnavailable
from relay.sasl import decode_error_challenge, encode_xoauth2
from relay.secret import Secret
from relay.smtp.reply import SmtpReply


class CommandSession(Protocol):
    """What the login needs of `relay.smtp.upstream.UpstreamSmtpSession`."""

    @property
    def where(self) -> str: ...

    account: str

    async def command(self, line: str, what: str, *, sensitive: bool = False) -> SmtpReply: ...

    def abort(self) -> None: ...


async def authenticate_xoauth2(up: CommandSession, mailbox: str, token: Secret) -> SmtpReply:
    """AUTH XOAUTH2 in two steps on a connected session (the form Microsoft documents: the token
    is not an initial response, which would exceed RFC 4954's 512 octets); raise
    UpstreamAuthRejected (UpstreamUnavailable for 421) with the upstream's reply. Both failure
    shapes are handled: 334 with a base64 JSON error challenge, then an empty line and 535; or
    535 directly."""
    response = encode_xoauth2(mailbox, token.reveal())
    reply = await up.command("AUTH XOAUTH2", "AUTH")
    if reply.code == 334:
        reply = await up.command(response, "AUTH", sensitive=True)
        if reply.code == 334:
            # The server's error challenge (base64 JSON); an empty line gets the final reply.
            challenge = decode_error_challenge(" ".join(reply.text_lines)) or {}
            reply = await up.command("", "AUTH")
            if reply.code == 334:
                up.abort()
                raise UpstreamProtocolError(f"upstream {up.where} kept challenging XOAUTH2",
                                            account=up.account)
            if challenge and reply.code != 235:
                status = challenge.get("status")
                reply = SmtpReply(reply.code, reply.enhanced_code,
                                  (*reply.text_lines[:-1], f"{reply.text_lines[-1]} (status {status})"))
    if reply.code == 235:
        return reply
    error_cls = UpstreamUnavailable if reply.code == 421 else UpstreamAuthRejected
    raise error_cls(f"upstream {up.where} refused XOAUTH2 for {mailbox}: {reply}",
                    account=up.account, reply=reply.as_upstream_reply())

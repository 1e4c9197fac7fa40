"""The spool's `MessageSender` for accounts with ``send_via: graph``: Microsoft Graph's sendMail.

It sends what the live Graph path sends (`relay.graph.send.send_mime`: envelope-only recipients
as Bcc, one sendMail, or an upload session for a large message when ``large_messages:
upload_session``) and reads Graph's answer the same way (`relay.graph.answers.send_reply`):

* ``202 Accepted``: every recipient is accepted (Graph has no per-recipient verdict);
* 429/503: ``451 4.7.0``, a throttling reply, with Graph's ``Retry-After`` as the account's
  backoff (`relay.spool.schedule.AccountPace.finish`);
* 403: ``550 5.7.1`` and 413 (or Graph's too-big codes): ``552 5.3.4``, permanent: a DSN;
* 401 even after the client's one forced refresh (wrong audience, revoked), no token, or Graph
  unreachable: raised, like an SMTP login or connection failure, so the account backs off and the
  message stays queued.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from relay.config.model import AccountConfig, LimitsConfig
from relay.errors import GraphError
from relay.explain import log_explanation
from relay.graph.answers import send_reply
from relay.graph.client import GraphClient
from relay.graph.send import send_mime, size_limit
from relay.spool.entry import Envelope
from relay.spool.sender import SendResult

log = logging.getLogger("relay.spool")


class GraphMessageSender:
    """Sends an account's spooled messages through Microsoft Graph (see the module docstring)."""

    def __init__(self, account: AccountConfig, client: GraphClient, limits: LimitsConfig) -> None:
        self.account = account
        self.client = client
        self.limit = size_limit(client.graph, limits.max_message_bytes)

    async def send(self, envelope: Envelope, recipients: Sequence[str], content: bytes) -> SendResult:
        """One sendMail (or upload session) for ``recipients``; Graph's answer as a `SendResult`."""
        try:
            refusal = await send_mime(self.client, content, recipients, self.limit)
        except GraphError as exc:
            if exc.status == 401:
                raise  # the token is refused even after a refresh: the account backs off
            reply = send_reply(exc)
            log.warning("spool: message %s (account '%s') via Graph: %s", envelope.id,
                        self.account.name, exc)
            log_explanation(self.account.name, self.account.mailbox,
                            exc.reply.one_line() if exc.reply else None)
            throttled = exc.status in (429, 503)
            return SendResult(reply=reply, retry_after_s=exc.retry_after_s if throttled else None)
        if refusal is not None:
            log.warning("spool: message %s (account '%s') not sent through Graph: %s", envelope.id,
                        self.account.name, refusal.one_line())
            return SendResult(reply=refusal)
        return SendResult(accepted=tuple(recipients))

    async def close(self) -> None:
        """Nothing to release: no session is held between messages (HTTP clients are the service's)."""

"""Reading through Microsoft Graph: a `relay.pop3.mailbox.Pop3Mailbox` for ``read_via: graph``.

At login the Inbox is listed once, oldest first, ``accounts.X.graph.page_size`` per request and
at most ``max_messages`` (PROTOCOLS.md 9.2: ``$select``, the PidTagMessageSize property, whole
``@odata.nextLink`` URLs followed as given, ``Prefer: IdType="ImmutableId"`` on every request).
RETR and TOP stream ``GET /messages/{id}/$value`` into the client (`PopBodyWriter`; TOP stops
reading once it has its lines). DELE only marks; at QUIT each marked message is moved to Deleted
Items (``delete: move``) or deleted (``delete: delete``). A session that ends any other way
deletes nothing.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from relay.config.model import AccountConfig, LimitsConfig
from relay.errors import GraphError, RelayError, UpstreamAuthRejected, UpstreamReply, UpstreamUnavailable
from relay.graph.client import GraphClient, GraphService
from relay.graph.maildrop import Fetch, Maildrop, PopBodyWriter, SnapshotItem
from relay.pop3.mailbox import MailboxOpener, Pop3Mailbox
from relay.pop3.replies import StatusLine, err, ok, parse_status
from relay.tokens.source import TokenSource

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("relay.graph")

SIZE_PROPERTY = "Integer 0x0E08"  # PidTagMessageSize
CAPABILITIES = ("TOP", "UIDL", "USER")


def inbox_query(page_size: int) -> str:
    """The first list request of the snapshot."""
    query = urllib.parse.urlencode({
        "$select": "id,receivedDateTime",
        "$expand": f"singleValueExtendedProperties($filter=id eq '{SIZE_PROPERTY}')",
        "$orderby": "receivedDateTime asc",
        "$top": str(page_size),
    }, quote_via=urllib.parse.quote)
    return f"/mailFolders/inbox/messages?{query}"


def snapshot_item(entry: Any) -> SnapshotItem | None:
    """A list entry as (id, size); None when it has no id. A missing size counts as 0."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    size = 0
    for prop in entry.get("singleValueExtendedProperties") or ():
        if isinstance(prop, dict) and prop.get("id") == SIZE_PROPERTY:
            try:
                size = max(0, int(str(prop.get("value"))))
            except ValueError:
                size = 0
    return SnapshotItem(entry["id"], size)


def as_pop3_failure(exc: GraphError, account: AccountConfig) -> RelayError:
    """A Graph refusal at login in the terms the POP3 session answers: throttling and server
    trouble are temporary, permission/mailbox problems permanent, a refused token AUTH."""
    reply = UpstreamReply("-ERR", None, exc.reply.text if exc.reply else str(exc.status))
    if exc.status in (429, 503) or exc.status >= 500:
        return UpstreamUnavailable(str(exc), account=account.name, reply=reply)
    if exc.status == 401:
        return UpstreamAuthRejected(str(exc), account=account.name, reply=reply)
    text = "Microsoft Graph denied access to the mailbox; ask the relay operator"
    return UpstreamAuthRejected(str(exc), account=account.name,
                                reply=UpstreamReply("-ERR", "SYS/PERM", f"[SYS/PERM] {text}"))


class GraphMailbox:
    """One POP3 session's view of the account's Inbox through Graph (see the module docstring)."""

    capabilities: tuple[str, ...] | None = CAPABILITIES

    def __init__(self, account: AccountConfig, client: GraphClient) -> None:
        self.account = account
        self.client = client
        self.maildrop = Maildrop([])
        self._body: AsyncIterator[bytes] | None = None
        self.closed = False

    @property
    def has_buffered_data(self) -> bool:
        """The status line goes out before the first Graph bytes arrive."""
        return False

    async def open(self) -> StatusLine:
        """Take the login snapshot; the +OK for the client."""
        assert self.account.graph is not None
        items: list[SnapshotItem] = []
        cap = self.account.graph.max_messages
        url: str | None = self.client.user_path + inbox_query(min(self.account.graph.page_size, cap))
        while url is not None and len(items) < cap:
            response = await self.client.request("GET", url, what="list the Inbox")
            payload = response.json()
            for entry in payload.get("value") or ():
                item = snapshot_item(entry)
                if item is not None and len(items) < cap:
                    items.append(item)
            next_link = payload.get("@odata.nextLink")
            url = next_link if isinstance(next_link, str) else None
        self.maildrop = Maildrop(items)
        more = " (more are waiting: delete these to see them)" if url is not None else ""
        return parse_status(ok(f"Graph mailbox has {len(items)} messages{more}"))

    async def command(self, line: bytes) -> StatusLine:
        """Answer from the snapshot; RETR/TOP start the $value download."""
        answer = self.maildrop.answer(line)
        if isinstance(answer, bytes):
            status, _, body = answer.partition(b"\r\n")
            self._body = _once(body) if body else None
            return parse_status(status + b"\r\n")
        return await self._start_fetch(answer)

    async def _start_fetch(self, fetch: Fetch) -> StatusLine:
        path = f"{self.client.user_path}/messages/{urllib.parse.quote(fetch.item.id, safe='')}/$value"
        try:
            response = await self.client.request("GET", path, what=f"fetch message {fetch.number}",
                                                 stream=True)
        except GraphError as exc:
            if exc.status == 404:
                return parse_status(err("Message no longer exists in the mailbox"))
            raise
        self._body = self._convert(response, PopBodyWriter(fetch.lines))
        size = f" {fetch.item.size} octets" if fetch.lines is None else ""
        return parse_status(ok(f"message follows{size}"))

    async def _convert(self, response: httpx.Response, writer: PopBodyWriter) -> AsyncIterator[bytes]:
        import httpx  # noqa: PLC0415

        try:
            async for chunk in response.aiter_bytes():
                part = writer.feed(chunk)
                if part:
                    yield part
                if writer.done:
                    break
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"account '{self.account.name}': Microsoft Graph failed "
                                      f"mid-message: {type(exc).__name__}: {exc}",
                                      account=self.account.name) from None
        finally:
            await response.aclose()
        yield writer.finish()

    def stream_body(self) -> AsyncIterator[bytes]:
        """The body of the last positive multi-line reply."""
        body, self._body = self._body, None
        assert body is not None, "stream_body without a multi-line reply"
        return body

    async def quit(self) -> StatusLine:
        """UPDATE: move (or delete) the messages marked with DELE; -ERR if any could not be."""
        assert self.account.graph is not None
        doomed = self.maildrop.to_delete()
        failed = 0
        for item in doomed:
            try:
                await self._remove(item)
            except RelayError as exc:
                failed += 1
                log.warning("account '%s': message %s not removed at QUIT: %s", self.account.name,
                            item.id[-12:], exc)
        await self.close()
        if failed:
            return parse_status(err(f"{failed} of {len(doomed)} messages could not be deleted; "
                                    "they stay in the mailbox", "SYS/TEMP"))
        verb = "moved to Deleted Items" if self.account.graph.delete == "move" else "deleted"
        return parse_status(ok(f"{len(doomed)} messages {verb}"))

    async def _remove(self, item: SnapshotItem) -> None:
        assert self.account.graph is not None
        path = f"{self.client.user_path}/messages/{urllib.parse.quote(item.id, safe='')}"
        if self.account.graph.delete == "delete":
            await self.client.request("DELETE", path, what="delete a message", expect=(204, 404))
        else:
            await self.client.request("POST", path + "/move", what="move a message to Deleted Items",
                                      json={"destinationId": "deleteditems"}, expect=(200, 201, 404))

    async def close(self) -> None:
        """End the session: nothing is deleted (the snapshot is simply forgotten)."""
        self.closed = True
        body, self._body = self._body, None
        if body is not None and hasattr(body, "aclose"):
            await body.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def graph_mailboxes(service: GraphService, otherwise: MailboxOpener) -> MailboxOpener:
    """An opener: the Graph Inbox for ``read_via: graph`` accounts, ``otherwise`` for the rest."""

    async def open_mailbox(account: AccountConfig, tokens: TokenSource,
                           limits: LimitsConfig) -> tuple[Pop3Mailbox, StatusLine]:
        if account.read_via != "graph":
            return await otherwise(account, tokens, limits)
        mailbox = GraphMailbox(account, service.client_for(account))
        try:
            return mailbox, await mailbox.open()
        except GraphError as exc:
            raise as_pop3_failure(exc, account) from None

    return open_mailbox

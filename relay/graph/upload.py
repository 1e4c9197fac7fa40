"""Messages over Graph's 4 MB request limit (``large_messages: upload_session``).

Graph takes at most 4 MB per request, MIME base64 included (PROTOCOLS.md 9.1). A larger message
is sent in three steps: the message without its largest attachments becomes a draft (``POST
/users/{id}/messages``, base64 MIME), each detached attachment is uploaded (an upload session in
chunks for 3 MB and more, ``PUT`` to the pre-authenticated URL *without* Authorization; smaller
ones in one ``POST .../attachments``), and the draft is sent (``POST .../send``, 202). Needs
Mail.ReadWrite besides Mail.Send. The parts left in the draft are re-serialised by Python's email
package, so such a message is not byte-exact (a DKIM or S/MIME signature over it breaks); messages
that fit the limit never take this path. `split_large` (pure) decides what is detached.
"""

from __future__ import annotations

import base64
import contextlib
import email.policy
import time
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import TYPE_CHECKING

from relay.errors import UpstreamUnavailable
from relay.graph.answers import graph_error, parse_answer

if TYPE_CHECKING:
    from relay.graph.client import GraphClient

UPLOAD_SESSION_MIN_BYTES = 3 * 1024 * 1024  # Graph: upload sessions for attachments of 3-150 MB
CHUNK_BYTES = 10 * 320 * 1024  # a multiple of 320 KiB (Graph's advice), under the 4 MB request limit
_POLICY = email.policy.SMTP  # CRLF line ends


@dataclass(frozen=True, slots=True)
class Detached:
    """An attachment taken out of the message: uploaded to the draft separately."""

    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Split:
    """The message without the detached attachments, and those attachments."""

    mime: bytes
    detached: tuple[Detached, ...]


def _fits(mime: bytes, max_request_bytes: int) -> bool:
    return (len(mime) + 2) // 3 * 4 <= max_request_bytes


def _attachments(message: Message) -> list[tuple[Message, Message]]:
    """(parent, part) for every non-multipart part that is an attachment, largest first."""
    found: list[tuple[Message, Message]] = []
    for parent in message.walk():
        if not parent.is_multipart():
            continue
        for part in parent.get_payload():
            if isinstance(part, Message) and not part.is_multipart() and (
                    part.get_content_disposition() == "attachment" or part.get_content_maintype()
                    not in ("text", "message")):
                found.append((parent, part))
    return sorted(found, key=lambda pair: len(str(pair[1].get_payload())), reverse=True)


def split_large(mime: bytes, max_request_bytes: int) -> Split | None:
    """Detach the largest attachments until the rest fits one request; None if it never does."""
    message = BytesParser(policy=email.policy.default).parsebytes(mime)
    assert isinstance(message, EmailMessage)
    detached: list[Detached] = []
    for parent, part in _attachments(message):
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        name = part.get_filename() or f"attachment-{len(detached) + 1}"
        detached.append(Detached(name, part.get_content_type(), data))
        siblings = parent.get_payload()
        assert isinstance(siblings, list)
        siblings.remove(part)
        rest = message.as_bytes(policy=_POLICY)
        if _fits(rest, max_request_bytes):
            return Split(rest, tuple(detached))
    return None


async def send_large(client: GraphClient, split: Split) -> None:
    """Draft, attachments, send (see the module docstring); GraphError / UpstreamUnavailable."""
    user = client.user_path
    response = await client.request("POST", f"{user}/messages", what="create the draft",
                                    content=base64.b64encode(split.mime),
                                    headers={"Content-Type": "text/plain"}, expect=(201,))
    draft = f"{user}/messages/{response.json()['id']}"
    try:
        for item in split.detached:
            if len(item.data) >= UPLOAD_SESSION_MIN_BYTES:
                await _upload(client, draft, item)
            else:
                await client.request("POST", f"{draft}/attachments", what="attach a file", expect=(201,),
                                     json={"@odata.type": "#microsoft.graph.fileAttachment",
                                           "name": item.name, "contentType": item.content_type,
                                           "contentBytes": base64.b64encode(item.data).decode("ascii")})
        await client.request("POST", f"{draft}/send", what="send the draft", content=b"", expect=(202,))
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: no half-built draft left behind
            await client.request("DELETE", draft, what="delete the unsent draft", expect=(204, 404))
        raise


async def _upload(client: GraphClient, draft: str, item: Detached) -> None:
    import httpx  # noqa: PLC0415

    session = await client.request("POST", f"{draft}/attachments/createUploadSession", expect=(201,),
                                   what="start an attachment upload",
                                   json={"AttachmentItem": {"attachmentType": "file", "name": item.name,
                                                            "size": len(item.data),
                                                            "contentType": item.content_type}})
    url = str(session.json()["uploadUrl"])
    http = client.service.http(client.graph)
    total = len(item.data)
    for start in range(0, total, CHUNK_BYTES):
        chunk = item.data[start:start + CHUNK_BYTES]
        headers = {"Content-Type": "application/octet-stream",  # no Authorization: the URL is the key
                   "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{total}"}
        try:
            answer = await http.put(url, content=chunk, headers=headers)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"account '{client.account.name}': uploading {item.name} to "
                                      f"Microsoft Graph failed: {type(exc).__name__}: {exc}",
                                      account=client.account.name) from None
        if answer.status_code not in (200, 201):
            parsed = parse_answer(answer.status_code, dict(answer.headers), answer.content, time.time())
            error = graph_error(parsed, client.account.name, client.account.mailbox, "attachment upload")
            if parsed.status in (401, 403, 413) or parsed.throttled:
                raise error
            # A refused range or an expired session says nothing about the message: temporary (451).
            raise UpstreamUnavailable(str(error), account=client.account.name, reply=error.reply)

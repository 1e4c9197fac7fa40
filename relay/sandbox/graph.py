"""`SandboxGraphServer`: a fake Microsoft Graph mail API on loopback (plain HTTP) for tests and demo.

Endpoints below ``/v1.0/users/{mailbox}`` (PROTOCOLS.md 9.1, 9.2): ``POST sendMail`` (base64
MIME, ``text/plain``; 202), ``GET mailFolders/{folder}`` and ``.../messages`` (``$top``, paged by
``@odata.nextLink``, the PidTagMessageSize property), ``GET messages/{id}/$value``, ``POST
messages/{id}/move``, ``DELETE messages/{id}``; for large messages ``POST messages`` (a draft from
base64 MIME), ``POST messages/{id}/attachments`` (fileAttachment), ``.../createUploadSession``
with ``PUT /upload/{token}`` chunks (pre-authenticated: a request *with* Authorization is
refused) and ``POST messages/{id}/send``. Tokens come from the sandbox OAuth provider and
are checked as Graph does: unknown or expired -> 401, a token for another resource (no
graph.microsoft.com scope) -> 401 "Invalid audience", a missing permission or a mailbox the
token may not use -> 403, an unknown mailbox -> 404. Fault switches: `throttle` (429/503 with
Retry-After), `fail_next`, `denied_permissions`; the request limit (413) is `max_request_bytes`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import urllib.parse
from dataclasses import dataclass

from relay.graph.envelope import field_addresses, header_fields
from relay.httpserver import HttpLimits, HttpRequest, HttpResponse, json_response, serve_connection
from relay.sandbox.graph_store import FOLDERS, FileAttachment, GraphMailboxes
from relay.sandbox.loop import LoopbackServer
from relay.sandbox.oauth import SandboxOAuthProvider

GRAPH_RESOURCE = "https://graph.microsoft.com/"
GRAPH_SCOPES = ("https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite",
                "offline_access")
ALL_PERMISSIONS = frozenset({"Mail.Send", "Mail.Read", "Mail.ReadWrite"})
READ_PERMISSIONS = frozenset({"Mail.Read", "Mail.ReadWrite"})
# Bodies are read whole (Graph itself answers 413 above max_request_bytes).
_LIMITS = HttpLimits(max_head_bytes=64 * 1024, max_body_bytes=64 * 1024 * 1024, idle_timeout_s=30.0)
_ROUTE = re.compile(r"/v1\.0/users/(?P<mailbox>[^/]+)(?P<rest>/.*)?")
_UPLOAD = re.compile(r"/upload/(?P<token>[A-Za-z0-9_-]+)")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass
class UploadSession:
    """An attachment upload in progress."""

    mailbox: str
    draft_id: str
    name: str
    content_type: str
    size: int
    received: bytearray


@dataclass
class Fault:
    """A prepared error answer for the next matching requests."""

    status: int
    code: str
    message: str
    retry_after: str | None = None


def _error(status: int, code: str, message: str,
           headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


class SandboxGraphServer(LoopbackServer):
    """A loopback fake of Graph's mail API; ``mailboxes`` holds the data, ``requests`` the log."""

    name = "graph"

    def __init__(self, oauth: SandboxOAuthProvider, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.oauth = oauth
        self.mailboxes = GraphMailboxes()
        self.max_request_bytes = 4_000_000
        self.denied_permissions: set[str] = set()
        self.send_as: dict[str, set[str]] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.uploads: dict[str, UploadSession] = {}
        self._faults: list[Fault] = []

    @property
    def url(self) -> str:
        """The Graph root, as `accounts.X.graph.url`."""
        return f"http://{self.host}:{self.port}/v1.0"

    # --- fault switches (any thread) --------------------------------------------------------------

    def throttle(self, n: int = 1, retry_after: str | None = "1", status: int = 429) -> None:
        """Answer the next ``n`` requests 429 (or 503) ApplicationThrottled with Retry-After."""
        fault = Fault(status, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.",
                      retry_after)
        with self.lock:
            self._faults.extend([fault] * n)

    def fail_next(self, status: int, code: str, message: str, n: int = 1) -> None:
        """Answer the next ``n`` requests with this Graph error."""
        with self.lock:
            self._faults.extend([Fault(status, code, message)] * n)

    def clear_faults(self) -> None:
        """Every fault switch off."""
        with self.lock:
            self._faults.clear()
            self.denied_permissions.clear()

    def sent(self) -> list[bytes]:
        """The MIME of every accepted sendMail, in order."""
        with self.mailboxes.lock:
            return [m.mime for m in self.mailboxes.sent]

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far."""
        with self.lock:
            return list(self.requests)

    # --- HTTP -------------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve HTTP requests on one connection (relay.httpserver, keep-alive) until it closes."""
        await serve_connection(reader, writer, self._serve, _LIMITS)

    async def _serve(self, request: HttpRequest) -> HttpResponse:
        response = self.route(request)
        with self.lock:
            self.requests.append((request.method, request.path, response.status))
        return response

    def route(self, req: HttpRequest) -> HttpResponse:
        """Authenticate, apply faults, dispatch."""
        self.count("requests")
        upload = _UPLOAD.fullmatch(req.path)
        if upload is not None and req.method == "PUT":
            return self._upload_chunk(req, upload["token"])
        match = _ROUTE.fullmatch(req.path)
        if match is None:
            return _error(400, "BadRequest", f"Resource not found for the segment '{req.path}'.")
        mailbox = urllib.parse.unquote(match["mailbox"])
        rest = match["rest"] or ""
        permissions = self._authorize(req, mailbox)
        if isinstance(permissions, HttpResponse):
            return permissions
        with self.lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            headers = (("Retry-After", fault.retry_after),) if fault.retry_after is not None else ()
            return _error(fault.status, fault.code, fault.message, headers)
        if not self.mailboxes.has(mailbox):
            return _error(404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid.")
        return self._dispatch(req, mailbox, rest, permissions)

    def _authorize(self, req: HttpRequest, mailbox: str) -> frozenset[str] | HttpResponse:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _error(401, "InvalidAuthenticationToken", "Access token is empty.")
        info = self.oauth.grants.lookup_access(auth[7:])
        if info is None:
            return _error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is "
                          "expired.")
        graph_scopes = [s[len(GRAPH_RESOURCE):] for s in info.scope.split() if s.startswith(GRAPH_RESOURCE)]
        if not graph_scopes:
            return _error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid "
                          "audience.")
        granted = ALL_PERMISSIONS if ".default" in graph_scopes else frozenset(graph_scopes)
        granted = granted - self.denied_permissions
        allowed = (info.user.lower() == mailbox.lower() if info.user is not None
                   else info.mailboxes is None or mailbox.lower() in info.mailboxes)
        if not allowed:
            return _error(403, "ErrorAccessDenied", "Access to OData is disabled." if info.user is None
                          else "Access is denied. Check credentials and try again.")
        return granted

    def _dispatch(self, req: HttpRequest, mailbox: str, rest: str,
                  granted: frozenset[str]) -> HttpResponse:
        denied = _error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if req.method == "POST" and rest == "/sendMail":
            return self._send_mail(req, mailbox) if "Mail.Send" in granted else denied
        if req.method == "POST" and rest == "/messages":
            return self._create_draft(req, mailbox) if "Mail.ReadWrite" in granted else denied
        parts = rest.strip("/").split("/")
        if req.method == "GET" and parts[:1] == ["mailFolders"] and len(parts) in (2, 3):
            if not granted & READ_PERMISSIONS:
                return denied
            if parts[1].lower() not in FOLDERS:
                return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            if len(parts) == 2:
                count = len(self.mailboxes.folder(mailbox, parts[1].lower()))
                return json_response(200, {"id": parts[1], "totalItemCount": count})
            if parts[2] == "messages":
                return self._list(req, mailbox, parts[1].lower())
        if parts[:1] == ["messages"] and 2 <= len(parts) <= 4:
            message_id = urllib.parse.unquote(parts[1])
            found = self.mailboxes.find(mailbox, message_id)
            need = (READ_PERMISSIONS if req.method == "GET" else frozenset({"Mail.Send"})
                    if parts[2:] == ["send"] else frozenset({"Mail.ReadWrite"}))
            if not granted & need:
                return denied
            if found is None:
                return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            return self._message(req, mailbox, message_id, parts[2:], found[1].mime)
        return _error(400, "BadRequest", f"Unsupported request: {req.method} {rest}")

    def _message(self, req: HttpRequest, mailbox: str, message_id: str, tail: list[str],
                 mime: bytes) -> HttpResponse:
        if req.method == "GET" and tail == ["$value"]:
            return HttpResponse(200, mime, "text/plain")
        if req.method == "POST" and tail == ["move"]:
            try:
                destination = str(json.loads(req.body)["destinationId"]).lower()
            except (ValueError, KeyError, TypeError):
                return _error(400, "ErrorInvalidRequest", "destinationId is required.")
            moved = self.mailboxes.move(mailbox, message_id, destination)
            if moved is None:
                return _error(404, "ErrorItemNotFound", "The specified folder was not found.")
            return json_response(201, moved.listing())
        if req.method == "DELETE" and not tail:
            self.mailboxes.delete(mailbox, message_id)
            return HttpResponse(204, b"", "text/plain")
        if req.method == "POST" and tail == ["send"]:
            refusal = self._send_as_refusal(mailbox, mime)
            if refusal is not None:
                return refusal
            if not self.mailboxes.send_draft(mailbox, message_id):
                return _error(400, "ErrorInvalidRequest", "Only drafts can be sent.")
            return HttpResponse(202, b"", "text/plain")
        if req.method == "POST" and tail[:1] == ["attachments"]:
            return self._attachment(req, mailbox, message_id, tail[1:])
        return _error(405, "ErrorInvalidRequest", "The OData request is not supported.")

    def _list(self, req: HttpRequest, mailbox: str, folder: str) -> HttpResponse:
        try:
            top = int(req.query.get("$top", "10"))
            skip = int(req.query.get("$skiptoken", "0"))
        except ValueError:
            return _error(400, "BadRequest", "Invalid $top or $skiptoken.")
        if not 1 <= top <= 1000:
            return _error(400, "ErrorInvalidParameter", "$top must be between 1 and 1000.")
        items = self.mailboxes.folder(mailbox, folder)
        if req.query.get("$orderby", "").replace("%20", " ") == "receivedDateTime desc":
            items.reverse()
        page = [m.listing() for m in items[skip:skip + top]]
        payload: dict[str, object] = {"value": page}
        if skip + top < len(items):
            query = dict(req.query, **{"$skiptoken": str(skip + top)})
            payload["@odata.nextLink"] = (f"http://{self.host}:{self.port}{req.path}?"
                                          + urllib.parse.urlencode(query))
        return json_response(200, payload)

    def _mime_body(self, req: HttpRequest) -> bytes | HttpResponse:
        """The MIME of a text/plain base64 request body, or the error answer."""
        if len(req.body) > self.max_request_bytes:
            return _error(413, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
        content_type = req.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "text/plain":
            return _error(400, "ErrorInvalidRequest", "Content-Type must be text/plain for MIME content.")
        try:
            mime = base64.b64decode(req.body.replace(b"\r\n", b"").replace(b"\n", b""), validate=True)
        except (binascii.Error, ValueError):
            mime = b""
        if not mime:
            return _error(400, "ErrorMimeContentInvalidBase64String",
                          "Invalid base64 string for MIME content.")
        return mime

    def _create_draft(self, req: HttpRequest, mailbox: str) -> HttpResponse:
        mime = self._mime_body(req)
        if isinstance(mime, HttpResponse):
            return mime
        draft_id = self.mailboxes.deliver(mailbox, mime, folder="drafts")
        return json_response(201, {"id": draft_id, "isDraft": True})

    def _attachment(self, req: HttpRequest, mailbox: str, draft_id: str, tail: list[str]) -> HttpResponse:
        if len(req.body) > self.max_request_bytes:
            return _error(413, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
        try:
            payload = json.loads(req.body)
            if tail == ["createUploadSession"]:
                item = payload["AttachmentItem"]
                token = secrets.token_urlsafe(24)
                with self.lock:
                    self.uploads[token] = UploadSession(mailbox, draft_id, str(item["name"]),
                                                        str(item.get("contentType", "")), int(item["size"]),
                                                        bytearray())
                return json_response(201, {"uploadUrl": f"http://{self.host}:{self.port}/upload/{token}",
                                           "nextExpectedRanges": ["0-"]})
            if not tail:
                data = base64.b64decode(payload["contentBytes"], validate=True)
                self.mailboxes.attach(draft_id, FileAttachment(str(payload["name"]),
                                                               str(payload.get("contentType", "")), data))
                return json_response(201, {"name": payload["name"], "size": len(data)})
        except (ValueError, KeyError, TypeError, binascii.Error):
            return _error(400, "ErrorInvalidRequest", "Malformed attachment request.")
        return _error(400, "BadRequest", "Unsupported attachments request.")

    def _upload_chunk(self, req: HttpRequest, token: str) -> HttpResponse:
        if "authorization" in req.headers:
            return _error(401, "InvalidAuthenticationToken", "Do not send an Authorization header to "
                          "the pre-authenticated upload URL.")
        with self.lock:
            session = self.uploads.get(token)
        match = _CONTENT_RANGE.fullmatch(req.headers.get("content-range", ""))
        if session is None:
            return _error(404, "ErrorItemNotFound", "The upload session does not exist.")
        if match is None or len(req.body) > self.max_request_bytes:
            return _error(400, "InvalidRange", "Content-Range is missing or the chunk is too large.")
        start, end, total = (int(g) for g in match.groups())
        if start != len(session.received) or end - start + 1 != len(req.body) or total != session.size:
            return _error(416, "InvalidRange", f"Expected range {len(session.received)}-.")
        session.received += req.body
        if len(session.received) < session.size:
            return json_response(200, {"nextExpectedRanges": [f"{len(session.received)}-"]})
        with self.lock:
            del self.uploads[token]
        self.mailboxes.attach(session.draft_id, FileAttachment(session.name, session.content_type,
                                                               bytes(session.received)))
        return json_response(201, {"name": session.name, "size": session.size})

    def _send_mail(self, req: HttpRequest, mailbox: str) -> HttpResponse:
        mime = self._mime_body(req)
        if isinstance(mime, HttpResponse):
            return mime
        refusal = self._send_as_refusal(mailbox, mime)
        if refusal is not None:
            return refusal
        self.mailboxes.record_sent(mailbox, mime, req.headers.get("content-type", ""))
        return HttpResponse(202, b"", "text/plain")

    def _send_as_refusal(self, mailbox: str, mime: bytes) -> HttpResponse | None:
        """403 ErrorSendAsDenied when the From is not the mailbox or one it may send as."""
        senders = [a.lower() for f in header_fields(mime) if f.name == b"from"
                   for a in field_addresses(mime, f)]
        allowed = {mailbox.lower(), *(a.lower() for a in self.send_as.get(mailbox.lower(), ()))}
        if any(s not in allowed for s in senders):
            return _error(403, "ErrorSendAsDenied", "The user account which was used to submit this "
                          "request does not have the right to send mail on behalf of the specified "
                          "sending account. Cannot submit message.")
        return None

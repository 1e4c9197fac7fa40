"""The fake Graph's mailboxes: folders of MIME messages with immutable ids (thread-safe).

Used by `relay.sandbox.graph.SandboxGraphServer`; tests put messages in and read what was sent,
moved or deleted.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

FOLDERS = ("inbox", "deleteditems", "sentitems", "drafts")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def new_immutable_id() -> str:
    """An id shaped like Exchange's immutable ids: long, base64url, case-sensitive, ending '='."""
    return "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A" + secrets.token_urlsafe(72) + "="


@dataclass
class StoredMessage:
    """One message in a folder."""

    id: str
    mime: bytes
    received: datetime
    internet_message_id: str

    def listing(self) -> dict[str, object]:
        """The JSON of a list item ($select'ed fields plus the PidTagMessageSize property)."""
        return {"id": self.id, "receivedDateTime": self.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "internetMessageId": self.internet_message_id,
                "singleValueExtendedProperties": [{"id": "Integer 0x0E08", "value": str(len(self.mime))}]}


@dataclass(frozen=True)
class FileAttachment:
    """An attachment added to a draft (upload session or fileAttachment)."""

    name: str
    content_type: str
    data: bytes


@dataclass
class SentMessage:
    """What was sent: the mailbox in the URL, the MIME bytes (sendMail, or the draft's MIME) and
    the attachments added to a draft before its send."""

    mailbox: str
    mime: bytes
    content_type: str
    attachments: tuple[FileAttachment, ...] = ()


@dataclass
class GraphMailboxes:
    """Every mailbox's folders; ``sent`` is the log of sendMail requests, in order."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    folders: dict[str, dict[str, dict[str, StoredMessage]]] = field(default_factory=dict)
    sent: list[SentMessage] = field(default_factory=list)
    attachments: dict[str, list[FileAttachment]] = field(default_factory=dict)  # draft id -> files
    _counter: int = 0

    def add_mailbox(self, mailbox: str) -> None:
        """Create an empty mailbox (idempotent)."""
        with self.lock:
            self.folders.setdefault(mailbox.lower(), {name: {} for name in FOLDERS})

    def has(self, mailbox: str) -> bool:
        """True when the mailbox exists."""
        with self.lock:
            return mailbox.lower() in self.folders

    def deliver(self, mailbox: str, mime: bytes, folder: str = "inbox") -> str:
        """Put a message into a folder; return its immutable id."""
        with self.lock:
            self.add_mailbox(mailbox)
            self._counter += 1
            msg = StoredMessage(new_immutable_id(), mime, _EPOCH + timedelta(seconds=self._counter),
                                f"<{self._counter}@sandbox.test>")
            self.folders[mailbox.lower()][folder][msg.id] = msg
            return msg.id

    def folder(self, mailbox: str, folder: str) -> list[StoredMessage]:
        """The messages of a folder, oldest first."""
        with self.lock:
            items = list(self.folders.get(mailbox.lower(), {}).get(folder, {}).values())
        return sorted(items, key=lambda m: m.received)

    def find(self, mailbox: str, message_id: str) -> tuple[str, StoredMessage] | None:
        """(folder, message) for an id in any folder of the mailbox."""
        with self.lock:
            for name, items in self.folders.get(mailbox.lower(), {}).items():
                if message_id in items:
                    return name, items[message_id]
        return None

    def move(self, mailbox: str, message_id: str, destination: str) -> StoredMessage | None:
        """Move a message (its immutable id stays); None if it or the folder does not exist."""
        with self.lock:
            found = self.find(mailbox, message_id)
            boxes = self.folders.get(mailbox.lower(), {})
            if found is None or destination not in boxes:
                return None
            folder, msg = found
            del boxes[folder][message_id]
            boxes[destination][message_id] = msg
            return msg

    def delete(self, mailbox: str, message_id: str) -> bool:
        """Delete a message; False if it does not exist."""
        with self.lock:
            found = self.find(mailbox, message_id)
            if found is None:
                return False
            del self.folders[mailbox.lower()][found[0]][message_id]
            return True

    def attach(self, draft_id: str, item: FileAttachment) -> None:
        """Add an attachment to a draft."""
        with self.lock:
            self.attachments.setdefault(draft_id, []).append(item)

    def send_draft(self, mailbox: str, draft_id: str) -> bool:
        """Send a draft: logged like a sendMail with its attachments; False if it is not a draft."""
        with self.lock:
            found = self.find(mailbox, draft_id)
            if found is None or found[0] != "drafts":
                return False
            del self.folders[mailbox.lower()]["drafts"][draft_id]
            files = tuple(self.attachments.pop(draft_id, []))
            self.record_sent(mailbox, found[1].mime, "text/plain", files)
            return True

    def record_sent(self, mailbox: str, mime: bytes, content_type: str,
                    attachments: tuple[FileAttachment, ...] = ()) -> None:
        """Log a sendMail and file a copy in Sent Items (as Exchange does for MIME sends)."""
        with self.lock:
            self.sent.append(SentMessage(mailbox.lower(), mime, content_type, attachments))
            self.add_mailbox(mailbox)
            self._counter += 1
            msg = StoredMessage(new_immutable_id(), mime, _EPOCH + timedelta(seconds=self._counter),
                                f"<sent{self._counter}@sandbox.test>")
            self.folders[mailbox.lower()]["sentitems"][msg.id] = msg

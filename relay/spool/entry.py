"""One spooled message on disk: its envelope and content, AES-256-GCM encrypted with the store key.

File layout (``queue/ID.msg``)::

    MAGIC(7) VERSION(1) NONCE_PREFIX(8) then records: LENGTH(4, big endian) CIPHERTEXT+TAG

Record 0 is the envelope (JSON), records 1..n the content in segments of at most
`SEGMENT_BYTES`, so a large message is encrypted as it arrives. Record ``i`` is sealed with the
nonce ``NONCE_PREFIX + i`` and bound (associated data) to the header, the message id, its index
and whether it is the last record: a truncated, reordered or spliced file never decrypts, so a
partial message can never be delivered. The delivery state (attempts, recipients done) lives
beside it in ``ID.state``, one sealed JSON blob. Pure: no I/O here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.errors import SpoolCorrupt

MAGIC = b"XO2RSPL"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
PREFIX_BYTES = 8
LENGTH_BYTES = 4
SEGMENT_BYTES = 1024 * 1024
STATE_MAGIC = b"XO2RSST\x01"

EntryKind = Literal["message", "dsn"]


@dataclass(frozen=True)
class Envelope:
    """What a spooled message is: who sent it, to whom, through which account, since when."""

    id: str
    account: str
    sender: str  # "" for the null sender <>
    recipients: tuple[str, ...]
    received_at: float  # epoch seconds
    kind: EntryKind = "message"  # a "dsn" never bounces (no loops)
    mail_options: Mapping[str, str] = field(default_factory=dict)  # BODY, SMTPUTF8 to pass on

    def to_json(self) -> bytes:
        """The envelope record's plaintext."""
        data = asdict(self)
        data["recipients"] = list(self.recipients)
        data["mail_options"] = dict(self.mail_options)
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """Parse an envelope record; ValueError/KeyError/TypeError on a malformed one."""
        data = json.loads(raw)
        return cls(id=str(data["id"]), account=str(data["account"]), sender=str(data["sender"]),
                   recipients=tuple(str(r) for r in data["recipients"]),
                   received_at=float(data["received_at"]),
                   kind="dsn" if data.get("kind") == "dsn" else "message",
                   mail_options={str(k): str(v) for k, v in dict(data.get("mail_options", {})).items()})


@dataclass
class DeliveryState:
    """What the worker learnt so far about one message (``ID.state``)."""

    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float = 0.0
    delivered: list[str] = field(default_factory=list)  # recipients the upstream accepted
    failed: dict[str, str] = field(default_factory=dict)  # recipient -> permanent refusal

    def to_json(self) -> bytes:
        """The state blob's plaintext."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DeliveryState:
        """Parse a state blob."""
        data = json.loads(raw)
        return cls(attempts=int(data["attempts"]), last_error=data.get("last_error"),
                   next_attempt_at=float(data["next_attempt_at"]),
                   delivered=[str(r) for r in data.get("delivered", [])],
                   failed={str(k): str(v) for k, v in dict(data.get("failed", {})).items()})


def _aad(entry_id: str, index: int, last: bool) -> bytes:
    return HEADER + b"|spool|" + entry_id.encode() + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


class EntrySealer:
    """Encrypts one message as it arrives: `start` (header + envelope), then `segment`s."""

    def __init__(self, key: bytes, entry_id: str) -> None:
        self._aead = AESGCM(key)
        self._id = entry_id
        self._prefix = os.urandom(PREFIX_BYTES)
        self._index = 0

    def start(self, envelope: Envelope) -> bytes:
        """The header and the envelope record."""
        return HEADER + self._prefix + self._record(envelope.to_json(), last=False)

    def segment(self, content: bytes, *, last: bool) -> bytes:
        """One content record; ``last`` on the final one (it may be empty)."""
        return self._record(content, last=last)

    def _record(self, plain: bytes, *, last: bool) -> bytes:
        index = self._index
        self._index += 1
        sealed = self._aead.encrypt(_nonce(self._prefix, index), plain, _aad(self._id, index, last))
        return len(sealed).to_bytes(LENGTH_BYTES, "big") + sealed


def _records(blob: bytes, where: str) -> Iterator[tuple[int, bytes, bool]]:
    """(index, sealed record, is it the last one in the file) for each record."""
    pos, index = len(HEADER) + PREFIX_BYTES, 0
    while pos < len(blob):
        if pos + LENGTH_BYTES > len(blob):
            raise SpoolCorrupt(f"{where}: truncated record header")
        length = int.from_bytes(blob[pos:pos + LENGTH_BYTES], "big")
        pos += LENGTH_BYTES
        if pos + length > len(blob):
            raise SpoolCorrupt(f"{where}: truncated record")
        yield index, blob[pos:pos + length], pos + length == len(blob)
        pos += length
        index += 1


def open_entry(key: bytes, entry_id: str, blob: bytes, *, envelope_only: bool = False,
               where: str = "spool file") -> tuple[Envelope, bytes]:
    """Decrypt a whole file: (envelope, content); SpoolCorrupt when anything is wrong with it."""
    if not blob.startswith(HEADER) or len(blob) < len(HEADER) + PREFIX_BYTES:
        raise SpoolCorrupt(f"{where}: not an xoauth2-relay spool file (bad header)")
    aead, prefix = AESGCM(key), blob[len(HEADER):len(HEADER) + PREFIX_BYTES]
    envelope: Envelope | None = None
    parts: list[bytes] = []
    ended = False
    for index, sealed, at_end in _records(blob, where):
        last = at_end and index > 0
        try:
            plain = aead.decrypt(_nonce(prefix, index), sealed, _aad(entry_id, index, last))
        except InvalidTag:
            raise SpoolCorrupt(f"{where}: record {index} does not decrypt (modified, truncated, or "
                               "written with another token store key)") from None
        if index == 0:
            try:
                envelope = Envelope.from_json(plain)
            except (ValueError, KeyError, TypeError) as exc:
                raise SpoolCorrupt(f"{where}: malformed envelope ({exc})") from None
            if envelope_only:
                return envelope, b""
        else:
            parts.append(plain)
            ended = last
    if envelope is None or not ended:
        raise SpoolCorrupt(f"{where}: the file ends before the message does (truncated)")
    return envelope, b"".join(parts)


def seal_state(key: bytes, entry_id: str, state: DeliveryState) -> bytes:
    """The ``ID.state`` file bytes."""
    nonce = os.urandom(12)
    return STATE_MAGIC + nonce + AESGCM(key).encrypt(nonce, state.to_json(), STATE_MAGIC + entry_id.encode())


def open_state(key: bytes, entry_id: str, blob: bytes) -> DeliveryState:
    """Parse ``ID.state``; SpoolCorrupt when it does not decrypt."""
    if not blob.startswith(STATE_MAGIC) or len(blob) < len(STATE_MAGIC) + 12 + 16:
        raise SpoolCorrupt(f"state of {entry_id}: bad header")
    nonce = blob[len(STATE_MAGIC):len(STATE_MAGIC) + 12]
    try:
        plain = AESGCM(key).decrypt(nonce, blob[len(STATE_MAGIC) + 12:], STATE_MAGIC + entry_id.encode())
        return DeliveryState.from_json(plain)
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise SpoolCorrupt(f"state of {entry_id}: does not decrypt or is malformed") from None

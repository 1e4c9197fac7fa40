"""The spool file format: round trip, and every kind of damage refused as a whole."""

from __future__ import annotations

import os

import pytest

from relay.errors import SpoolCorrupt
from relay.spool.entry import (
    SEGMENT_BYTES,
    DeliveryState,
    EntrySealer,
    Envelope,
    open_entry,
    open_state,
    seal_state,
)

KEY = os.urandom(32)
ENVELOPE = Envelope(id="abc", account="sales", sender="app@example.com", recipients=("a@x.test", "b@x.test"),
                    received_at=1_800_000_000.5, mail_options={"BODY": "8BITMIME"})


def _sealed(content_parts: list[bytes], key: bytes = KEY, entry_id: str = "abc") -> bytes:
    sealer = EntrySealer(key, entry_id)
    out = sealer.start(Envelope(**{**ENVELOPE.__dict__, "id": entry_id}))
    for part in content_parts[:-1]:
        out += sealer.segment(part, last=False)
    return out + sealer.segment(content_parts[-1], last=True)


@pytest.mark.parametrize("parts", [[b""], [b"hello\r\n"], [b"a" * SEGMENT_BYTES, b"b" * 10, b""]])
def test_round_trip_gives_envelope_and_exact_content(parts: list[bytes]) -> None:
    """What was sealed (in any number of segments) opens to the same envelope and bytes."""
    envelope, content = open_entry(KEY, "abc", _sealed(parts))
    assert envelope == ENVELOPE
    assert content == b"".join(parts)


def test_envelope_only_reads_the_first_record() -> None:
    """envelope_only returns the envelope without the content."""
    assert open_entry(KEY, "abc", _sealed([b"x"]), envelope_only=True) == (ENVELOPE, b"")


@pytest.mark.parametrize("cut", [8, 20, 40, -1, -17])
def test_truncated_file_is_corrupt(cut: int) -> None:
    """A file cut anywhere (even exactly between records) never opens."""
    blob = _sealed([b"first", b"second"])
    with pytest.raises(SpoolCorrupt):
        open_entry(KEY, "abc", blob[:cut])


def test_file_cut_at_a_record_boundary_is_corrupt() -> None:
    """Dropping the last record leaves a file whose final record is not marked last: refused."""
    sealer = EntrySealer(KEY, "abc")
    head = sealer.start(ENVELOPE) + sealer.segment(b"part one", last=False)
    with pytest.raises(SpoolCorrupt, match=r"truncated|does not decrypt"):
        open_entry(KEY, "abc", head)


def test_flipped_byte_wrong_key_and_other_id_are_corrupt() -> None:
    """Tampering, another key, or a file renamed to another id: refused."""
    blob = bytearray(_sealed([b"content"]))
    blob[-3] ^= 1
    with pytest.raises(SpoolCorrupt, match="does not decrypt"):
        open_entry(KEY, "abc", bytes(blob))
    with pytest.raises(SpoolCorrupt):
        open_entry(os.urandom(32), "abc", _sealed([b"content"]))
    with pytest.raises(SpoolCorrupt):
        open_entry(KEY, "other", _sealed([b"content"]))
    with pytest.raises(SpoolCorrupt, match="bad header"):
        open_entry(KEY, "abc", b"garbage")


def test_state_round_trip_and_tamper() -> None:
    """The delivery state survives a round trip; a modified blob is refused."""
    state = DeliveryState(attempts=2, last_error="421 4.3.2 busy", next_attempt_at=5.0,
                          delivered=["a@x.test"], failed={"b@x.test": "550 5.1.1 unknown"})
    blob = seal_state(KEY, "abc", state)
    assert open_state(KEY, "abc", blob) == state
    with pytest.raises(SpoolCorrupt):
        open_state(KEY, "abd", blob)


def test_store_reads_only_the_envelope_record_and_still_catches_damage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """load_envelope reads the first record alone (not a large body); a damaged one is corrupt."""
    from relay.config.model import SpoolConfig
    from relay.spool.store import SpoolStore

    store = SpoolStore(tmp_path / "spool", KEY, SpoolConfig()).open()
    blob = _sealed([b"x" * SEGMENT_BYTES, b"tail"], entry_id="e1")
    (store.queue_dir / "e1.msg").write_bytes(blob)
    store.sizes["e1"] = len(blob)
    assert store.load_envelope("e1").id == "e1"
    assert len(store._read_envelope_record("e1")) < 2000
    damaged = bytearray(blob)
    damaged[30] ^= 1
    (store.queue_dir / "e1.msg").write_bytes(bytes(damaged))
    with pytest.raises(SpoolCorrupt):
        store.load_envelope("e1")
    assert (store.corrupt_dir / "e1.msg").exists()
    store.close()

"""Never a false 250: a full spool, a full disk or a write error answers 452 4.3.1; a corrupt spool
file is moved aside and reported, and the other messages are still delivered."""

from __future__ import annotations

import contextlib
import errno
import logging
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.spool.store import SpoolStore

from .conftest import StartSpoolRelay, wait_until

DOWN = "421 4.3.2 Service not available"


def _body(subject: str, size: int) -> bytes:
    line = b"x" * 98 + b"\r\n"
    return f"Subject: {subject}\r\n\r\n".encode() + line * (size // len(line))


BODY = _body("s", 1000)


def _send(relay, body: bytes = BODY) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    with relay.smtp() as client:
        code, text = client.mail("app@sandbox.test")
        if code != 250:
            return code, text
        client.rcpt("to@example.com")
        return client.data(body)


def test_spool_max_messages_refuses_with_452_at_mail(start_spool_relay: StartSpoolRelay) -> None:
    """spool.max_messages reached: MAIL gets 452 4.3.1 and the queued messages are untouched."""
    relay = start_spool_relay(max_messages=3)
    relay.sandbox.smtp.greeting_reply = DOWN
    assert [_send(relay)[0] for _ in range(3)] == [250, 250, 250]
    code, text = _send(relay)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert relay.queued() == 3


def test_spool_max_bytes_refuses_the_message_that_does_not_fit(start_spool_relay: StartSpoolRelay) -> None:
    """spool.max_bytes: a message that would pass it gets 452 4.3.1 after its final dot."""
    relay = start_spool_relay(max_bytes=5000)
    relay.sandbox.smtp.greeting_reply = DOWN
    assert _send(relay)[0] == 250
    big = _body("big", 6000)
    code, text = _send(relay, big)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert relay.queued() == 1
    assert list((relay.store_dir / "tmp").iterdir()) == []


def test_injected_enospc_write_error_gives_452_and_no_file(start_spool_relay: StartSpoolRelay,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A write that fails with ENOSPC (injected into the store's file writes) gives 452 4.3.1, logs
    the full disk, leaves no partial file; the next message after the disk has room is taken."""
    relay = start_spool_relay()
    relay.sandbox.smtp.greeting_reply = DOWN
    store: SpoolStore = relay.service.store

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store.write_fault = disk_full
    with caplog.at_level(logging.ERROR, logger="relay.spool"):
        code, text = _send(relay)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert "disk holding the spool" in caplog.text and "is full" in caplog.text
    assert relay.queued() == 0 and list((relay.store_dir / "tmp").iterdir()) == []
    store.write_fault = lambda: None
    assert _send(relay)[0] == 250
    assert relay.queued() == 1


def test_injected_eio_write_error_gives_452(start_spool_relay: StartSpoolRelay) -> None:
    """Any other write error (EIO) is 452 4.3.1 too, never 250."""
    relay = start_spool_relay()

    def broken() -> None:
        raise OSError(errno.EIO, "Input/output error")

    relay.service.store.write_fault = broken
    code, text = _send(relay)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert relay.sandbox.smtp.messages() == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (a real full disk); skipped where mounting is not permitted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_disk_gives_452_and_every_250_is_delivered(start_spool_relay: StartSpoolRelay,
                                                             small_tmpfs: Path) -> None:
    """The spool on a 64 KiB tmpfs: messages are taken until the disk is full, then 452 4.3.1;
    after the upstream recovers every message that got 250 is delivered."""
    relay = start_spool_relay(directory=small_tmpfs / "spool")
    relay.sandbox.smtp.greeting_reply = DOWN
    body = _body("fill", 8000)
    codes = [_send(relay, body)[0] for _ in range(12)]
    assert 250 in codes and 452 in codes, codes
    assert set(codes) == {250, 452}
    accepted = codes.count(250)
    assert relay.queued() == accepted
    relay.wait_backing_off()
    relay.sandbox.smtp.clear_faults()
    relay.advance(61)
    stored = relay.sandbox.smtp.wait_for_messages(accepted)
    assert len(stored) == accepted
    wait_until(lambda: relay.queued() == 0, what="spool drained")


def test_corrupt_file_is_moved_aside_and_the_others_are_delivered(start_spool_relay: StartSpoolRelay,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A spool file modified on disk does not decrypt: it goes to corrupt/ with an error log, is
    never delivered, and the other messages are delivered."""
    relay = start_spool_relay()
    relay.sandbox.smtp.greeting_reply = DOWN
    for _ in range(3):
        assert _send(relay)[0] == 250
    relay.wait_backing_off()  # before the damage: the first attempt read an intact file
    files = sorted((relay.store_dir / "queue").glob("*.msg"))
    victim = files[1]
    blob = bytearray(victim.read_bytes())
    blob[-5] ^= 0xFF
    victim.write_bytes(bytes(blob))
    relay.sandbox.smtp.clear_faults()
    with caplog.at_level(logging.ERROR, logger="relay.spool"):
        relay.advance(61)
        stored = relay.sandbox.smtp.wait_for_messages(2)
        wait_until(lambda: relay.queued() == 0, what="spool drained")
    assert len(stored) == 2
    assert (relay.store_dir / "corrupt" / victim.name).exists()
    assert victim.stem in caplog.text and "does not decrypt" in caplog.text


def test_truncated_file_is_never_delivered_in_part(start_spool_relay: StartSpoolRelay) -> None:
    """A spool file cut short (as by a crash without fsync) is refused as a whole, not sent in part."""
    relay = start_spool_relay()
    relay.sandbox.smtp.greeting_reply = DOWN
    assert _send(relay, _body("t", 3_000_000))[0] == 250
    relay.wait_backing_off()  # before the damage: the first attempt read an intact file
    (victim,) = (relay.store_dir / "queue").glob("*.msg")
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2 + 100])
    relay.sandbox.smtp.clear_faults()
    relay.advance(61)
    wait_until((relay.store_dir / "corrupt" / victim.name).exists, what="moved aside")
    assert relay.sandbox.smtp.messages() == []
    with smtplib.SMTP("127.0.0.1", relay.smtp_port) as probe:  # the relay still serves
        assert probe.noop()[0] == 250

"""The spool directory: durable writes with group commit, capacity, reading, corrupt files.

Layout (directory 0700, files 0600; one directory per relay replica)::

    tmp/          messages being received; removed at start (no client got a 250 for them)
    queue/        ID.msg (committed messages, see `relay.spool.entry`) and ID.state
    corrupt/      files that could not be read, moved aside (never deleted, never delivered)

A message is durable in two steps: its tmp file is written and fsynced (in a thread pool, so the
fsyncs of concurrent sessions overlap and the kernel's journal commits them together), then it
joins the next *group commit*: one thread renames every ready file into ``queue/`` and fsyncs
the directory once for all of them. Only after that does the client hear 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from relay.config.model import SpoolConfig
from relay.errors import SpoolCorrupt, SpoolError, SpoolFull
from relay.spool.crashpoints import crash_point
from relay.spool.entry import (
    HEADER,
    LENGTH_BYTES,
    PREFIX_BYTES,
    SEGMENT_BYTES,
    DeliveryState,
    EntrySealer,
    Envelope,
    open_entry,
    open_state,
    seal_state,
)

log = logging.getLogger("relay.spool")

IO_THREADS = 32
ENVELOPE_OFFSET = len(HEADER) + PREFIX_BYTES  # where record 0's length is
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolWriter:
    """One message being received: content is encrypted in segments into ``tmp/ID``."""

    def __init__(self, store: SpoolStore, envelope: Envelope) -> None:
        self.store = store
        self.envelope = envelope
        self.id = envelope.id
        self.size = 0  # content bytes
        self.written = 0  # file bytes
        self._sealer = EntrySealer(store.key, envelope.id)
        self._pending = bytearray(self._sealer.start(envelope))
        self._segment = bytearray()
        self._fd: int | None = None
        self.path = store.tmp_dir / envelope.id

    async def write(self, content: bytes) -> None:
        """Take more (unstuffed) content; a full segment is sealed and written to the tmp file."""
        self.size += len(content)
        self._segment += content
        if len(self._segment) >= SEGMENT_BYTES:
            self._pending += self._sealer.segment(bytes(self._segment), last=False)
            self._segment.clear()
            await self.store.run_io(self._flush)

    def _flush(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        data, self._pending = bytes(self._pending), bytearray()
        self.store.write_fault()
        self.written += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        crash_point("writing")

    def finish_sync(self) -> None:
        """Seal the last segment, write, fsync and close the tmp file (runs in the io pool)."""
        self._pending += self._sealer.segment(bytes(self._segment), last=True)
        self._segment.clear()
        self._flush()
        assert self._fd is not None
        os.fsync(self._fd)
        self._close()
        crash_point("written")

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def discard(self) -> None:
        """Forget the message: close and remove the tmp file."""
        self._close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class SpoolStore:
    """The spool directory of one relay (see the module docstring)."""

    def __init__(self, directory: Path, key: bytes, config: SpoolConfig, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.key = key
        self.config = config
        self.clock = clock
        self.tmp_dir = self.directory / "tmp"
        self.queue_dir = self.directory / "queue"
        self.corrupt_dir = self.directory / "corrupt"
        self.count = 0
        self.bytes = 0
        self.sizes: dict[str, int] = {}
        self.on_commit: Callable[[Envelope], None] | None = None
        self.write_fault: Callable[[], None] = lambda: None  # tests inject ENOSPC here
        self._seq = itertools.count()
        self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="spool-io")
        self._ready: list[tuple[SpoolWriter, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.group_commits = 0  # directory fsyncs; fewer than the messages when sessions overlap

    # --- start ------------------------------------------------------------------------------

    def open(self, *, serving: bool = True) -> SpoolStore:
        """Create the directories (0700), count what is queued; ``serving`` (the relay, not
        `relay queue`) also drops unfinished tmp files; `relay queue` creates nothing."""
        if not serving and not self.directory.exists():
            return self  # no spool yet: empty
        try:
            for path in (self.directory, self.tmp_dir, self.queue_dir, self.corrupt_dir):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(path, 0o700)
            for leftover in self.tmp_dir.iterdir() if serving else ():
                leftover.unlink()  # never acknowledged: the client did not get 250 for it
            for leftover in self.queue_dir.glob("*.tmp") if serving else ():
                leftover.unlink()  # a state file being replaced: the old one is still there
            for path in self.queue_dir.glob("*.msg"):
                self.sizes[path.stem] = path.stat().st_size
        except OSError as exc:
            raise SpoolError(f"cannot use the spool directory {self.directory} (spool.directory): "
                             f"{exc.strerror or exc}; check that the relay may write there") from None
        self.count, self.bytes = len(self.sizes), sum(self.sizes.values())
        return self

    def close(self) -> None:
        """Stop the io threads (after the deliveries have finished)."""
        self._io.shutdown(wait=True)

    def ids(self) -> list[str]:
        """Every queued message id, oldest first (ids sort by arrival)."""
        return sorted(self.sizes)

    def new_id(self) -> str:
        """A new id: milliseconds, a sequence and random bits, so ids sort by arrival."""
        ms = int(self.clock() * 1000)
        return f"{ms:012x}{next(self._seq) % 0x10000:04x}{os.urandom(2).hex()}"

    # --- capacity ---------------------------------------------------------------------------

    def room_for(self, size: int) -> bool:
        """True when one more message of ``size`` bytes fits within the configured limits."""
        return self.count + 1 <= self.config.max_messages and self.bytes + size <= self.config.max_bytes

    # --- writing ----------------------------------------------------------------------------

    def begin(self, envelope: Envelope) -> SpoolWriter:
        """Start receiving a message."""
        return SpoolWriter(self, envelope)

    async def run_io(self, work: Callable[[], None]) -> None:
        """Run blocking file work in the spool's io threads."""
        await asyncio.get_running_loop().run_in_executor(self._io, work)

    async def commit(self, writer: SpoolWriter) -> None:
        """Make the message durable (see the module docstring); SpoolFull / SpoolError if not."""
        if not self.room_for(writer.size):
            writer.discard()
            raise SpoolFull(f"the spool is full ({self.count} messages, {self.bytes} bytes; "
                            "spool.max_messages / spool.max_bytes)")
        self.count += 1
        self.bytes += writer.size  # reserved now, so concurrent commits cannot overfill
        try:
            await self.run_io(writer.finish_sync)
            await self._join_group(writer)
        except OSError as exc:
            self.count -= 1
            self.bytes -= writer.size
            writer.discard()
            if exc.errno in _FULL_ERRNOS:
                raise SpoolFull(f"the disk holding the spool {self.directory} is full") from None
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc.strerror or exc}") from None
        self.sizes[writer.id] = writer.written
        self.bytes += writer.written - writer.size
        crash_point("committed")
        if self.on_commit is not None:
            self.on_commit(writer.envelope)

    async def _join_group(self, writer: SpoolWriter) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready.append((writer, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._group_commits())
        await future

    async def _group_commits(self) -> None:
        """While files are ready: rename them all, fsync the queue directory once, wake them."""
        while self._ready:
            batch, self._ready = self._ready, []
            self.group_commits += 1
            try:
                writers = [w for w, _ in batch]
                await self.run_io(lambda: self._rename_all(writers))  # noqa: B023 - awaited here
            except OSError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _rename_all(self, writers: list[SpoolWriter]) -> None:
        for writer in writers:
            os.rename(writer.path, self.queue_dir / f"{writer.id}.msg")
        _fsync_dir(self.queue_dir)

    async def add(self, envelope: Envelope, content: bytes) -> None:
        """Spool a whole message at once (a DSN)."""
        writer = self.begin(envelope)
        await writer.write(content)
        await self.commit(writer)

    # --- reading and removing ---------------------------------------------------------------

    def _read(self, entry_id: str) -> bytes:
        try:
            return (self.queue_dir / f"{entry_id}.msg").read_bytes()
        except FileNotFoundError:
            raise KeyError(entry_id) from None

    def load(self, entry_id: str) -> tuple[Envelope, bytes]:
        """The message; a corrupt file is moved aside (and SpoolCorrupt raised); KeyError if gone."""
        where = self._where(entry_id)
        return self._checked(entry_id, lambda blob: open_entry(self.key, entry_id, blob, where=where))

    def load_envelope(self, entry_id: str) -> Envelope:
        """Only the envelope (record 0, read alone), for listing and scheduling."""
        return self._checked(entry_id, lambda blob: open_entry(
            self.key, entry_id, blob, envelope_only=True, where=self._where(entry_id)), envelope_only=True)[0]

    def _read_envelope_record(self, entry_id: str) -> bytes:
        """The file's header and first record only (a large message is not read)."""
        try:
            with open(self.queue_dir / f"{entry_id}.msg", "rb") as f:
                head = f.read(ENVELOPE_OFFSET + LENGTH_BYTES)
                length = int.from_bytes(head[ENVELOPE_OFFSET:], "big") if len(head) == ENVELOPE_OFFSET + \
                    LENGTH_BYTES else 0
                return head + f.read(length)
        except FileNotFoundError:
            raise KeyError(entry_id) from None

    def _checked(self, entry_id: str, parse: Callable[[bytes], tuple[Envelope, bytes]], *,
                 envelope_only: bool = False) -> tuple[Envelope, bytes]:
        blob = self._read_envelope_record(entry_id) if envelope_only else self._read(entry_id)
        try:
            envelope, content = parse(blob)
            if envelope.id != entry_id:
                raise SpoolCorrupt(f"{self._where(entry_id)}: the envelope names another message")
        except SpoolCorrupt as exc:
            self.quarantine(entry_id, str(exc))
            raise
        return envelope, content

    def _where(self, entry_id: str) -> str:
        return f"spool file {self.queue_dir / entry_id}.msg"

    def load_state(self, entry_id: str) -> DeliveryState:
        """The delivery state (a fresh one when none was saved or it is unreadable)."""
        try:
            return open_state(self.key, entry_id, (self.queue_dir / f"{entry_id}.state").read_bytes())
        except FileNotFoundError:
            return DeliveryState()
        except SpoolCorrupt as exc:
            log.warning("%s; starting its delivery state afresh", exc)
            return DeliveryState()

    def save_state(self, entry_id: str, state: DeliveryState) -> None:
        """Replace ``ID.state`` atomically and durably."""
        path = self.queue_dir / f"{entry_id}.state"
        tmp = self.queue_dir / f"{entry_id}.state.tmp"  # tmp/ holds only message files
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, seal_state(self.key, entry_id, state))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.queue_dir)

    def remove(self, entry_id: str) -> bool:
        """Delete a message and its state (delivered, bounced or deleted); True if it existed."""
        size = self.sizes.pop(entry_id, None)
        existed = False
        for suffix in (".msg", ".state"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.queue_dir / f"{entry_id}{suffix}")
                existed = True
        if size is not None:
            self.count -= 1
            self.bytes -= size
        # No directory fsync here (one per delivered message slows the drain): a process crash cannot undo an
        # unlink; only a power loss within the file system's commit interval (ext4: 5 s) can bring
        # a delivered message back, to be sent once more - the documented duplicate window.
        return existed

    def quarantine(self, entry_id: str, reason: str) -> None:
        """Move a corrupt message aside into ``corrupt/`` and report it; other files are untouched."""
        size = self.sizes.pop(entry_id, None)
        if size is not None:
            self.count -= 1
            self.bytes -= size
        for suffix in (".msg", ".state"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.queue_dir / f"{entry_id}{suffix}", self.corrupt_dir / f"{entry_id}{suffix}")
        log.error("spool: %s; moved to %s (not delivered; inspect it, then delete it)",
                  reason, self.corrupt_dir / f"{entry_id}.msg")

    def oldest_age_s(self) -> float:
        """Age of the oldest queued message (from its id), 0 when empty."""
        if not self.sizes:
            return 0.0
        return max(0.0, self.clock() - int(min(self.sizes)[:12], 16) / 1000)

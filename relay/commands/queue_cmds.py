"""`relay queue list|show ID|retry [ID|--all]|delete ID`: the spool of ``delivery: spool`` accounts.

Works on the spool directory directly, with or without a running relay: `retry` leaves a marker
the running relay's worker picks up within a few seconds (and records it in the message's state
for the next start); `delete` removes the message (one being sent at that moment may still go).
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from relay.commands._ops import add_config_argument, load_config_file

if TYPE_CHECKING:
    from relay.spool.store import SpoolStore


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `relay queue` to the CLI."""
    p = subparsers.add_parser("queue", help="list, show, retry or delete spooled messages (delivery: spool)")
    sub = p.add_subparsers(dest="queue_command", required=True)
    listing = sub.add_parser("list", help="id, account, sender, recipients, size, age, attempts, last error")
    show = sub.add_parser("show", help="a message's envelope, delivery state and headers")
    show.add_argument("id")
    retry = sub.add_parser("retry", help="try a message (or all) again now, ending the account's backoff")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?")
    target.add_argument("--all", action="store_true", help="every queued message")
    delete = sub.add_parser("delete", help="remove a message from the spool without delivering it")
    delete.add_argument("id")
    for parser in (listing, show, retry, delete):
        add_config_argument(parser)
    p.set_defaults(func=cmd_queue)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def cmd_queue(args: argparse.Namespace) -> int:
    """Dispatch `relay queue ...`."""
    from relay.errors import SpoolCorrupt  # noqa: PLC0415 - keeps `relay --help` fast
    from relay.spool.store import SpoolStore  # noqa: PLC0415
    from relay.tokens.store import load_key  # noqa: PLC0415

    config = load_config_file(args.config)
    key = load_key(config.token_store)
    store = SpoolStore(config.spool_directory(), key, config.spool).open(serving=False)
    try:
        if args.queue_command == "list":
            return _list(store)
        entry_id: str = getattr(args, "id", None) or ""
        if entry_id and entry_id not in store.sizes:
            print(f"no message {entry_id} in the spool {store.queue_dir} (see `relay queue list`)")
            return 1
        if args.queue_command == "show":
            return _show(store, entry_id)
        if args.queue_command == "retry":
            return _retry(store, None if args.all else entry_id)
        store.remove(entry_id)
        print(f"deleted {entry_id} (not delivered, no DSN)")
        return 0
    except SpoolCorrupt as exc:
        print(f"{exc}; moved to {store.corrupt_dir}")
        return 1
    finally:
        store.close()


def _list(store: SpoolStore) -> int:
    from relay.errors import SpoolCorrupt  # noqa: PLC0415

    rows = [("ID", "ACCOUNT", "SENDER", "RECIPIENTS", "SIZE", "AGE", "ATTEMPTS", "LAST ERROR")]
    now = time.time()
    for entry_id in store.ids():
        try:
            envelope = store.load_envelope(entry_id)
        except (SpoolCorrupt, KeyError) as exc:
            print(f"{entry_id}: {exc}")
            continue
        state = store.load_state(entry_id)
        pending = [r for r in envelope.recipients if r not in state.delivered and r not in state.failed]
        rows.append((entry_id, envelope.account, f"<{envelope.sender}>", ",".join(pending),
                     str(store.sizes.get(entry_id, 0)), _age(now - envelope.received_at),
                     str(state.attempts), state.last_error or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"{len(rows) - 1} message(s), {store.bytes} bytes in {store.directory}")
    return 0


def _show(store: SpoolStore, entry_id: str) -> int:
    from relay.spool.dsn import original_headers  # noqa: PLC0415

    envelope, content = store.load(entry_id)
    state = store.load_state(entry_id)
    received = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(envelope.received_at))
    print(f"id:          {envelope.id}\naccount:     {envelope.account}\nkind:        {envelope.kind}\n"
          f"sender:      <{envelope.sender}>\nrecipients:  {', '.join(envelope.recipients)}\n"
          f"received:    {received}\nsize:        {len(content)} bytes\nattempts:    {state.attempts}\n"
          f"delivered:   {', '.join(state.delivered) or '-'}\nlast error:  {state.last_error or '-'}")
    for recipient, reply in state.failed.items():
        print(f"failed:      {recipient}: {reply}")
    print()
    print(original_headers(content).decode("utf-8", "replace").rstrip())
    return 0


def _retry(store: SpoolStore, entry_id: str | None) -> int:
    ids = [entry_id] if entry_id is not None else store.ids()
    if not store.queue_dir.exists():
        print(f"no spool at {store.directory} yet: nothing to retry")
        return 0
    for one in ids:
        state = store.load_state(one)
        state.next_attempt_at = 0.0
        store.save_state(one, state)
    marker = store.directory / "retry-all" if entry_id is None else store.queue_dir / f"{entry_id}.retry"
    marker.touch(mode=0o600)
    print(f"{len(ids)} message(s) marked for retry; a running relay tries them within a few seconds "
          "(the account's backoff ends)")
    return 0

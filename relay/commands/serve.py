"""`relay serve`: run the relay until SIGTERM/SIGINT; SIGHUP reloads the configuration."""

from __future__ import annotations

import argparse
import logging

from relay import eventloop
from relay.commands._ops import add_config_argument, load_config_file
from relay.logging_setup import add_logging_arguments, configure_logging

log = logging.getLogger("relay.serve")

DESCRIPTION = """\
Run the SMTP and POP3 listeners of the configuration until stopped.

Signals:
  SIGTERM, SIGINT  stop accepting connections, let open sessions finish for up to
                   limits.shutdown_grace_s seconds, then exit 0 (a second signal closes them now)
  SIGHUP           re-read the configuration file; when it is valid, new listeners take over and
                   open sessions finish on the old ones; when it is not, the error is logged and
                   the running configuration stays. A changed token_store needs a restart.
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `relay serve` to the CLI."""
    p = subparsers.add_parser("serve", help="run the relay (SMTP and POP3 listeners)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(p)
    add_logging_arguments(p)
    p.add_argument("--event-loop", choices=eventloop.CHOICES, default=None,
                   help="auto (default; uvloop when installed), uvloop or asyncio; "
                        f"also ${eventloop.ENV_VAR}")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Configure logging, load the configuration and run the relay; return the exit code."""
    from relay.app import RelayApp  # noqa: PLC0415 - keeps `relay --help` fast
    from relay.lean_imports import skip_unused_optional_imports  # noqa: PLC0415

    skip_unused_optional_imports()  # before anything imports httpx (the first token request)
    configure_logging(args.log_level, args.log_format)
    config = load_config_file(args.config)
    loop_kind = eventloop.resolve(args.event_loop)
    log.info("configuration %s: %d account(s); event loop: %s", args.config, len(config.accounts),
             eventloop.describe(loop_kind))
    app = RelayApp(config, loader=load_config_file)
    try:
        return eventloop.run(app.run(), loop_kind)
    except OSError as exc:
        # Typically a listener port already in use or not permitted.
        log.error("cannot start the listeners: %s (check listen.smtp / listen.pop3 host and port)", exc)
        return 1

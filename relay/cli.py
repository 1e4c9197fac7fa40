"""The `relay` command line: discovers subcommands in `relay.commands` and dispatches to them."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

import relay
import relay.commands
from relay.errors import RelayError


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Local SMTP/POP3 relay: plain logins in, OAuth 2.0 XOAUTH2 sessions out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {relay.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(relay.commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"relay.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def reopen_closed_std_fds() -> None:
    """Put /dev/null on a closed stdin/stdout/stderr (cron, ``<&-``).

    Otherwise the next socket would get descriptor 0, 1 or 2 (uvloop aborts on that, and a print
    would write into a connection) and ``sys.stdin`` would be None.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            with contextlib.suppress(OSError):
                setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the process exit code."""
    reopen_closed_std_fds()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except RelayError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("relay: interrupted", file=sys.stderr)
        return 130

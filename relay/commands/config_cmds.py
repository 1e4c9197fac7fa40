"""`relay check-config` and `relay hash-password`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from relay.configuration import load_config
from relay.errors import ConfigError
from relay.localauth import mixed_cost_warning
from relay.passwords import hash_password
from relay.sasl import FORBIDDEN_CHARS


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add check-config and hash-password."""
    check = subparsers.add_parser("check-config", help="validate a configuration file and list every problem")
    check.add_argument("-c", "--config", type=Path,
                       default=Path(os.environ.get("RELAY_CONFIG", "relay.yaml")),
                       help="the YAML configuration (default: $RELAY_CONFIG or relay.yaml)")
    check.set_defaults(func=run_check_config)
    hasher = subparsers.add_parser(
        "hash-password", help="hash a local password for accounts.NAME.password_hash",
        description="Reads a password (prompted without echo, or one line from stdin) and prints its "
                    "scrypt hash to paste into the YAML as password_hash.")
    hasher.set_defaults(func=run_hash_password)


def run_check_config(args: argparse.Namespace) -> int:
    """Print OK with a summary, or every problem with its YAML path; exit 0 or 2."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for path, message in exc.problems:
            print(f"{path}: {message}" if path else message, file=sys.stderr)
        return exc.exit_code
    print(f"OK: {_count(len(config.accounts), 'account')}, "
          f"{_count(len(config.credentials), 'credential')}")
    warning = mixed_cost_warning(config)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass  # noqa: PLC0415 - only this command prompts; `relay serve` imports this module too

        first = getpass.getpass("Password: ")
        second = getpass.getpass("Repeat password: ")
        if first != second:
            raise ConfigError("", "the two passwords differ; nothing was hashed")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def run_hash_password(args: argparse.Namespace) -> int:
    """Print the hash of a password read from the terminal or stdin."""
    password = _read_password().removesuffix("\r")
    if not password:
        raise ConfigError("", "the password is empty; nothing was hashed")
    if any(ch in FORBIDDEN_CHARS for ch in password):
        raise ConfigError("", "the password contains a control character (CR, LF, NUL or ^A), which "
                          "SMTP/POP3 clients cannot send; choose another")
    print(hash_password(password))
    return 0

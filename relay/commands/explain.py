"""`relay explain "TEXT"`: what a pasted provider reply or error means and how to fix it."""

from __future__ import annotations

import argparse
import sys

from relay.explain import explain_text


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the explain command."""
    parser = subparsers.add_parser(
        "explain", help="explain a provider error (SMTP/POP3 reply, AADSTS code) and its fix",
        description="Reads the text from the arguments (or stdin when none are given) and prints the "
                    "cause and the fix from the relay's error table, or 'unknown' with the raw text.")
    parser.add_argument("text", nargs="*", help="the reply or log line, e.g. \"535 5.7.139 ...\"")
    parser.add_argument("--account", help="fill the account name into the fix")
    parser.add_argument("--mailbox", help="fill the mailbox address into the fix")
    parser.add_argument("--list", action="store_true", help="print the whole table with its sources")
    parser.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    """Print the explanation; exit 0 when known, 1 when unknown."""
    if args.list:
        from relay.explain_table import EXPLANATIONS  # noqa: PLC0415

        for entry in EXPLANATIONS:
            print(f"{entry.key} [{entry.provider}] /{entry.pattern}/")
            print(f"  {entry.render()}\n  source: {entry.source}")
        return 0
    text = " ".join(args.text) if args.text else sys.stdin.read()
    answer = explain_text(text, account=args.account, mailbox=args.mailbox)
    print(answer)
    return 1 if answer.startswith("unknown:") else 0

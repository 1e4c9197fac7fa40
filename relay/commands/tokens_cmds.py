"""Commands for tokens: `relay authorize`, `relay tokens`, `relay revoke`, `relay init-key`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

from relay.config.model import RelayConfig
from relay.errors import ConfigError

DEFAULT_CONFIG = "relay.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the token commands to the CLI."""
    p = subparsers.add_parser("authorize", help="sign in once for an account and store its tokens")
    p.add_argument("account", help="the account name (a key under accounts:)")
    _config_arg(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--manual", action="store_true",
                      help="print the URL and read the redirected URL pasted from the browser")
    mode.add_argument("--device", action="store_true",
                      help="use the device code flow (enter a code on another device)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds (300)")
    p.add_argument("--no-browser", action="store_true", help="do not try to open a browser")
    p.set_defaults(func=cmd_authorize)

    p = subparsers.add_parser("tokens", help="show each account's token status (never a token)")
    _config_arg(p)
    p.set_defaults(func=cmd_tokens)

    p = subparsers.add_parser("revoke", help="forget an account's stored tokens (and revoke them upstream)")
    p.add_argument("account")
    _config_arg(p)
    p.set_defaults(func=cmd_revoke)

    p = subparsers.add_parser("init-key", help="create the token store's encryption key")
    p.add_argument("--key-file", type=Path, metavar="PATH",
                   help="write the key to PATH (mode 0600); without it, print a key for RELAY_STORE_KEY")
    p.set_defaults(func=cmd_init_key)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, default=Path(os.environ.get("RELAY_CONFIG", DEFAULT_CONFIG)),
                   help=f"the YAML configuration (default: $RELAY_CONFIG or {DEFAULT_CONFIG})")


def _load(path: Path) -> RelayConfig:
    try:
        from relay.config.loader import load_config  # noqa: PLC0415 - written in parallel; import on use
    except ImportError:
        raise ConfigError("", "the configuration loader is not available in this build") from None
    return load_config(path)


def cmd_authorize(args: argparse.Namespace) -> int:
    """`relay authorize ACCOUNT`: run the one-time sign-in and store the tokens."""
    from relay.authorize import Authorizer  # noqa: PLC0415 - keeps `relay --help` fast
    from relay.tokens.store import open_store  # noqa: PLC0415

    config = _load(args.config)
    store = open_store(config.token_store)
    mode = "manual" if args.manual else "device" if args.device else None

    async def run() -> None:
        await Authorizer(config, store).run(args.account, mode=mode, timeout_s=args.timeout,
                                            open_browser=not args.no_browser)

    asyncio.run(run())
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """`relay tokens`: a table of account, credentials, flow, status, valid until, last error."""
    from relay.tokens.manager import TokenManager  # noqa: PLC0415
    from relay.tokens.store import open_store  # noqa: PLC0415

    config = _load(args.config)
    manager = TokenManager(config, open_store(config.token_store))
    keepalive = timedelta(days=config.limits.token_keepalive_days)
    rows = [("ACCOUNT", "CREDENTIALS", "FLOW", "STATUS", "VALID UNTIL (UTC)", "KEEP-ALIVE REFRESH BY",
             "LAST ERROR")]
    for s in asyncio.run(manager.status()):
        until = s.valid_until.strftime("%Y-%m-%d %H:%M:%S") if s.valid_until else "-"
        due = "-"
        if s.obtained_at is not None and s.state in ("valid", "expired"):
            due = (s.obtained_at + keepalive).strftime("%Y-%m-%d %H:%M")
        rows.append((s.account, s.credentials, s.flow, s.state, until, due, s.last_error or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True)) + "  " + row[6])
    print(f"Idle grants are refreshed at least every {config.limits.token_keepalive_days:g} days "
          "(limits.token_keepalive_days) while `relay serve` runs.")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """`relay revoke ACCOUNT`: revoke upstream (best effort) and forget the stored tokens."""
    from relay.providers.registry import load_provider_class  # noqa: PLC0415
    from relay.tokens.manager import new_http_client  # noqa: PLC0415
    from relay.tokens.store import open_store  # noqa: PLC0415

    config = _load(args.config)
    if args.account not in config.accounts:
        raise ConfigError(f"accounts.{args.account}", f"no account '{args.account}' in the configuration")
    store = open_store(config.token_store)
    acc = config.accounts[args.account]
    provider = load_provider_class(config.credentials_for(acc).provider)(config.credentials_for(acc))

    async def run() -> tuple[bool, bool]:
        tokens = await store.get(acc.name)
        revoked = False
        if tokens is not None:
            async with new_http_client() as http:
                token = tokens.refresh_token or tokens.access_token
                revoked = await provider.revoke(http, token)
        return tokens is not None, revoked

    existed, revoked = asyncio.run(run())
    asyncio.run(store.delete(acc.name))
    if not existed:
        print(f"Account '{acc.name}' had no stored tokens.")
    else:
        upstream = ("revoked at the provider" if revoked
                    else "not revoked at the provider (no endpoint, or no confirmation); they expire "
                    "on their own")
        print(f"Forgot the tokens of account '{acc.name}' ({upstream}).")
    return 0


def cmd_init_key(args: argparse.Namespace) -> int:
    """`relay init-key`: create a key file (0600) or print a key for the environment variable."""
    from relay.tokens.store import generate_key, write_key_file  # noqa: PLC0415

    if args.key_file is None:
        print(generate_key())
        print("Put this in the RELAY_STORE_KEY environment variable of the relay (keep it secret; losing "
              "it means authorizing every account again).", file=sys.stderr)
        return 0
    write_key_file(args.key_file)
    print(f"Created the key file {args.key_file} (mode 0600); set token_store.key_file: {args.key_file}")
    return 0

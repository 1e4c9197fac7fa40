"""Commands for tokens: `relay authorize`, `relay tokens`, `relay revoke`, `relay init-key`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from relay.config.model import RelayConfig
from relay.errors import ConfigError

if TYPE_CHECKING:
    from relay.tokens.interface import TokenStore

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

    p = subparsers.add_parser("tokens", help="show each account's token status (never a token); "
                              "export/import the store (encrypted)")
    p.add_argument("action", nargs="?", choices=["export", "import"],
                   help="export: copy every account's tokens to an encrypted file (--to); import: "
                   "copy them from such a file (--from) into the configured store")
    p.add_argument("--to", type=Path, metavar="FILE", help="export: the file to create (mode 0600)")
    p.add_argument("--from", dest="source", type=Path, metavar="FILE", help="import: the file to read")
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
    from relay.commands._ops import load_config_file  # noqa: PLC0415 - keeps `relay --help` fast

    return load_config_file(path)


def cmd_authorize(args: argparse.Namespace) -> int:
    """`relay authorize ACCOUNT`: run the one-time sign-in and store the tokens."""
    from relay.authorize import Authorizer  # noqa: PLC0415 - keeps `relay --help` fast

    config = _load(args.config)
    mode: Literal["manual", "device"] | None = "manual" if args.manual else "device" if args.device else None

    async def run() -> None:
        async with opened_store(config) as store:
            await Authorizer(config, store).run(args.account, mode=mode, timeout_s=args.timeout,
                                                open_browser=not args.no_browser)

    asyncio.run(run())
    return 0


@contextlib.asynccontextmanager
async def opened_store(config: RelayConfig) -> AsyncIterator[TokenStore]:
    """The configured store (file or Redis), closed afterwards."""
    from relay.tokens.store import open_store_async  # noqa: PLC0415

    store = await open_store_async(config.token_store)
    try:
        yield store
    finally:
        await store.close()


def cmd_tokens(args: argparse.Namespace) -> int:
    """`relay tokens`: a table of account, credentials, flow, status, valid until, last error."""
    from relay.tokens.manager import AccountTokenStatus, TokenManager  # noqa: PLC0415

    config = _load(args.config)
    if args.action is not None:
        return _transfer(args, config)

    async def run() -> list[AccountTokenStatus]:
        async with opened_store(config) as store:
            manager = TokenManager(config, store)
            try:
                return await manager.status()
            finally:
                await manager.close()

    keepalive = timedelta(days=config.limits.token_keepalive_days)
    rows = [("ACCOUNT", "CREDENTIALS", "FLOW", "STATUS", "VALID UNTIL (UTC)", "KEEP-ALIVE REFRESH BY",
             "LAST ERROR")]
    for s in asyncio.run(run()):
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

    config = _load(args.config)
    if args.account not in config.accounts:
        raise ConfigError(f"accounts.{args.account}", f"no account '{args.account}' in the configuration")
    acc = config.accounts[args.account]
    provider = load_provider_class(config.credentials_for(acc).provider)(config.credentials_for(acc))

    async def run() -> tuple[bool, bool]:
        async with opened_store(config) as store:
            tokens = await store.get(acc.name, fresh=True)
            revoked = False
            if tokens is not None:
                async with new_http_client() as http:
                    token = tokens.refresh_token or tokens.access_token
                    revoked = await provider.revoke(http, token)
            await store.delete(acc.name)
        return tokens is not None, revoked

    existed, revoked = asyncio.run(run())
    if not existed:
        print(f"Account '{acc.name}' had no stored tokens.")
    else:
        upstream = ("revoked at the provider" if revoked
                    else "not revoked at the provider (no endpoint, or no confirmation); they expire "
                    "on their own")
        print(f"Forgot the tokens of account '{acc.name}' ({upstream}).")
    return 0


def _transfer(args: argparse.Namespace, config: RelayConfig) -> int:
    """`relay tokens export --to FILE` / `import --from FILE`: move tokens between stores, encrypted
    with the configured key (the file has the file store's format, mode 0600)."""
    from relay.tokens.keys import load_key  # noqa: PLC0415
    from relay.tokens.store import EncryptedFileStore  # noqa: PLC0415

    path = args.to if args.action == "export" else args.source
    if path is None:
        flag = "--to" if args.action == "export" else "--from"
        raise ConfigError("", f"relay tokens {args.action} needs {flag} FILE")
    if args.action == "export" and path.exists():
        raise ConfigError("", f"{path} already exists; export never overwrites a file (choose another name)")
    if args.action == "import" and not path.exists():
        raise ConfigError("", f"{path} does not exist")
    key = load_key(config.token_store)

    async def run() -> list[str]:
        file_store = EncryptedFileStore(path, key)
        async with opened_store(config) as store:
            source, target = (store, file_store) if args.action == "export" else (file_store, store)
            tokens = await source.load_all()
            for name in sorted(tokens):
                await target.put(tokens[name])
            return sorted(tokens)

    names = asyncio.run(run())
    where = f"to {path}" if args.action == "export" else f"from {path} into the configured store"
    print(f"{args.action.capitalize()}ed the tokens of {len(names)} account(s) {where}: "
          f"{', '.join(names) or '-'}")
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

"""`relay status`: the running relay's /status as tables (accounts, listeners), or raw JSON."""

from __future__ import annotations

import argparse
import json

from relay.commands._ops import add_config_argument, load_config_file
from relay.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `relay status` to the CLI."""
    p = subparsers.add_parser("status", help="show the running relay's accounts and listeners "
                              "(needs the admin listener)")
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help="print the /status JSON as it is")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait (5)")
    p.set_defaults(func=cmd_status)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
            for row in rows]


def render_status(doc: dict[str, object]) -> list[str]:
    """The /status document as printable lines (pure)."""
    ready = "ready" if doc.get("ready") else "NOT READY"
    lines = [f"xoauth2-relay {doc.get('version')}  up {doc.get('uptime_s')} s  {ready}"]
    lines += [f"  - {reason}" for reason in doc.get("reasons") or []]  # type: ignore[attr-defined]
    lines.append("")
    rows: list[tuple[str, ...]] = [("LISTENER", "ADDRESS", "TLS", "SESSIONS", "ACCEPTING")]
    for ls in doc.get("listeners") or []:  # type: ignore[attr-defined]
        rows.append((ls["name"], f"{ls['host']}:{ls['port']}", ls["tls"], str(ls["active_sessions"]),
                     "yes" if ls["accepting"] else "NO"))
    lines += [*_table(rows), ""]
    rows = [("ACCOUNT", "GRANT", "TOKEN EXPIRES (UTC)", "LAST REFRESH (UTC)", "SENT", "FETCHED",
             "LAST ERROR / FIX")]
    accounts: dict[str, dict[str, object]] = doc.get("accounts") or {}  # type: ignore[assignment]
    for name, acc in accounts.items():
        note = acc.get("last_upstream_error") or acc.get("last_token_error") or "-"
        if acc.get("fix"):
            note = f"{note} -> {acc['fix']}" if note != "-" else str(acc["fix"])
        rows.append((name, str(acc["grant_state"]), _short(acc.get("access_token_expires_at")),
                     _short(acc.get("last_refresh_at")), str(acc["messages_sent"]),
                     str(acc["messages_fetched"]), str(note)))
    return lines + _table(rows)


def _short(value: object) -> str:
    return str(value).replace("T", " ").replace("+00:00", "") if value else "-"


def cmd_status(args: argparse.Namespace) -> int:
    """Fetch /status from the admin listener and print it; 0 when ready, 1 when not."""
    from relay.commands._admin_client import admin_get  # noqa: PLC0415

    config = load_config_file(args.config)
    if config.admin is None:
        raise ConfigError("admin", "relay status reads the running relay's admin listener; add "
                          "`admin: {port: 9025}` to the configuration and restart `relay serve` "
                          "(`relay tokens` shows the stored token states without it)")
    answer = admin_get(config.admin, "/status", args.timeout)
    if answer.status != 200 or not isinstance(answer.body, dict):
        print(f"relay: error: the admin listener answered HTTP {answer.status} to /status"
              + (" (check admin.auth_token)" if answer.status == 401 else ""))
        return 1
    if args.json:
        print(json.dumps(answer.body, indent=1))
    else:
        print("\n".join(render_status(answer.body)))
    return 0 if answer.body.get("ready") else 1

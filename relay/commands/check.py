"""`relay check`: per account, is the token usable and do the upstream servers accept it?

Accounts that send or read through Microsoft Graph are probed there (`relay.graph.probe`).

For each account: the configuration loaded, the token state (refreshed when due, as the relay
would), then a real XOAUTH2 login to the upstream SMTP and POP3 servers (no message is sent, no
mail is read). Prints a table, then the fix for each failure; exits 1 when any account is broken.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field, replace

from relay.commands._ops import add_config_argument, load_config_file
from relay.config.model import AccountConfig, LimitsConfig, RelayConfig
from relay.errors import (
    AuthorizationNeeded,
    OAuthError,
    RelayError,
    TokenRefreshFailed,
    UpstreamAuthRejected,
    UpstreamError,
    UpstreamUnavailable,
)
from relay.explain import explain, explanation_suffix
from relay.providers.preflight import (
    Finding,
    certificate_findings,
    jwt_claims,
    service_principal_fix,
    token_findings,
)
from relay.secret import Secret
from relay.tokens.manager import TokenManager

OK = "ok"


@dataclass
class AccountCheck:
    """The outcome of checking one account: a cell per column and the fixes for its failures."""

    account: str
    oauth: str = "-"
    smtp: str = "-"
    pop3: str = "-"
    imap: str = "-"
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    claims: dict[str, object] | None = None  # the access token's JWT claims, when it is one

    @property
    def broken(self) -> bool:
        """True when any step failed."""
        return bool(self.fixes)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `relay check` to the CLI."""
    p = subparsers.add_parser("check", help="check each account: token, upstream SMTP, POP3 and IMAP login")
    add_config_argument(p)
    p.add_argument("accounts", nargs="*", metavar="ACCOUNT", help="only these accounts (default: all)")
    p.add_argument("--timeout", type=float, default=20.0, metavar="S",
                   help="connect/command timeout per upstream in seconds (20)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Run the checks, print the table and fixes; 0 when every account is OK, else 1."""
    from relay.commands.tokens_cmds import opened_store  # noqa: PLC0415

    config = load_config_file(args.config)
    print(f"Configuration {args.config}: OK ({len(config.accounts)} account(s))")
    names = args.accounts or list(config.accounts)
    unknown = [n for n in names if n not in config.accounts]
    if unknown:
        print(f"No such account: {', '.join(unknown)} (accounts: {', '.join(config.accounts) or 'none'})")
        return 1

    async def run() -> list[AccountCheck]:
        async with opened_store(config) as store:
            manager = TokenManager(config, store, retry_attempts=2, retry_base_delay_s=0.5)
            try:
                return [await check_account(config, manager, config.accounts[n], args.timeout)
                        for n in names]
            finally:
                await manager.close()

    results = asyncio.run(run())
    print_report(results)
    return 1 if any(r.broken for r in results) else 0


async def check_account(config: RelayConfig, manager: TokenManager, account: AccountConfig,
                        timeout_s: float) -> AccountCheck:
    """Check one account's token and upstream logins."""
    result = AccountCheck(account.name)
    name = account.name
    try:
        token = await manager.get_token(name)
    except AuthorizationNeeded as exc:
        why = explanation_suffix(str(exc), account=name, mailbox=account.mailbox,
                                 credentials=account.credentials)
        if why and "relay authorize" not in why:  # a setting is wrong (secret, certificate, tenant)
            result.oauth = "error"
            result.fixes.append(f"{name}: {exc}{why}")
            _add_findings(result, certificate_findings(config.credentials_for(account)))
        else:
            result.oauth = "needs authorize"
            result.fixes.append(f"{name}: {exc} -> run `relay authorize {name}`")
        return result
    except TokenRefreshFailed as exc:
        result.oauth = "refresh failed"
        result.fixes.append(f"{name}: {exc} -> check that this machine reaches the provider's token "
                            "endpoint (proxy, firewall, DNS), then run `relay check` again")
        return result
    except (OAuthError, RelayError) as exc:
        result.oauth = "error"
        why = explanation_suffix(str(exc), account=name, mailbox=account.mailbox,
                                 credentials=account.credentials)
        result.fixes.append(f"{name}: {exc}{why}")
        _add_findings(result, certificate_findings(config.credentials_for(account)))
        return result
    result.oauth = await _token_cell(manager, name)
    graph_only = account.send_via == account.read_via == "graph" and account.imap is None
    if not graph_only:  # the stored token is the Exchange one; a Graph-only account may hold a Graph one
        _preflight(config, account, token, result)
    if "graph" in (account.send_via, account.read_via):
        from relay.graph.probe import check_graph  # noqa: PLC0415

        send, read = await check_graph(manager, account, result.fixes)
        result.smtp, result.pop3 = send or result.smtp, read or result.pop3
    if account.smtp is not None and account.send_via == "smtp":
        result.smtp = await _check_smtp(config, manager, account, timeout_s, result.fixes,
                                        result.claims)
    if account.pop3 is not None and account.read_via == "pop3":
        result.pop3 = await _check_pop3(config, manager, account, timeout_s, result.fixes)
    if account.imap is not None:
        result.imap = await _check_imap(config, manager, account, timeout_s, result.fixes)
    return result


def _preflight(config: RelayConfig, account: AccountConfig, token: Secret, result: AccountCheck) -> None:
    """Permissions preflight: certificate expiry, and the claims of a Microsoft JWT access token."""
    from relay.providers.microsoft import MicrosoftProvider  # noqa: PLC0415
    from relay.providers.registry import load_provider_class  # noqa: PLC0415

    credentials = config.credentials_for(account)
    findings = certificate_findings(credentials)
    provider = load_provider_class(credentials.provider)(credentials)
    if isinstance(provider, MicrosoftProvider):
        result.claims = jwt_claims(token.reveal())
        if result.claims is not None:
            findings += token_findings(result.claims, account, mail_hosts=provider.mail_hosts())
    _add_findings(result, findings)


def _add_findings(result: AccountCheck, findings: list[Finding]) -> None:
    for finding in findings:
        (result.fixes if finding.severity == "error" else result.warnings).append(finding.text)


async def _token_cell(manager: TokenManager, name: str) -> str:
    for status in await manager.status():
        if status.account == name:
            if status.state == "valid" and status.valid_until is not None:
                return f"valid until {status.valid_until.strftime('%Y-%m-%d %H:%M')} UTC"
            return status.state
    return "valid"


async def _check_smtp(config: RelayConfig, manager: TokenManager, account: AccountConfig,
                      timeout_s: float, fixes: list[str], claims: dict[str, object] | None = None) -> str:
    from relay.smtp.upstream import open_logged_in  # noqa: PLC0415

    try:  # one forced refresh on refusal, as the relay does (login_with_refresh)
        session, _ = await open_logged_in(account, manager, _limits(config, timeout_s))
    except (UpstreamError, OAuthError) as exc:
        return _failure("smtp", account, exc, fixes, claims)
    await session.quit()
    return OK


def _limits(config: RelayConfig, timeout_s: float) -> LimitsConfig:
    """The configured limits with ``--timeout`` for connecting and each command."""
    return replace(config.limits, upstream_connect_timeout_s=timeout_s,
                   upstream_command_timeout_s=timeout_s)


async def _check_pop3(config: RelayConfig, manager: TokenManager, account: AccountConfig,
                      timeout_s: float, fixes: list[str]) -> str:
    from relay.pop3.upstream import open_upstream  # noqa: PLC0415

    try:  # forced refresh included
        session, _ = await open_upstream(account, manager, _limits(config, timeout_s))
    except (UpstreamError, OAuthError) as exc:
        return _failure("pop3", account, exc, fixes)
    try:
        await session.quit()
    except UpstreamError:
        await session.close()
    return OK


async def _check_imap(config: RelayConfig, manager: TokenManager, account: AccountConfig,
                      timeout_s: float, fixes: list[str]) -> str:
    from relay.imap.upstream import open_upstream  # noqa: PLC0415

    try:  # forced refresh included
        session, _ = await open_upstream(account, manager, _limits(config, timeout_s))
    except (UpstreamError, OAuthError) as exc:
        return _failure("imap", account, exc, fixes)
    await session.logout()
    return OK


def _failure(kind: str, account: AccountConfig, exc: Exception, fixes: list[str],
             claims: dict[str, object] | None = None) -> str:
    """Record the fix for an upstream failure and return the table cell."""
    name = account.name
    endpoint = getattr(account, kind)
    where = f"accounts.{name}.{kind}"
    if isinstance(exc, AuthorizationNeeded):
        fixes.append(f"{name} ({kind}): {exc} -> run `relay authorize {name}`")
        return "needs authorize"
    if isinstance(exc, UpstreamAuthRejected):
        reply = exc.reply.one_line() if exc.reply else str(exc)
        fixes.append(f"{name} ({kind}): {endpoint.host}:{endpoint.port} refused the token for "
                     f"{account.mailbox}: {reply} -> {_auth_fix(kind, account, reply, claims)}")
        return "REJECTED"
    if isinstance(exc, UpstreamUnavailable):
        fixes.append(f"{name} ({kind}): {exc} -> check {where} (host {endpoint.host}, port {endpoint.port}, "
                     f"tls {endpoint.tls}) and that this machine reaches it (firewall, proxy, DNS)")
        return "UNREACHABLE"
    fixes.append(f"{name} ({kind}): {exc}")
    return "FAILED"


def _auth_fix(kind: str, account: AccountConfig, reply: str, claims: dict[str, object] | None = None) -> str:
    """The operator's fix for an XOAUTH2 refusal: the error table's entry for the reply (an app-only
    token refused with 5.7.3: the service principal commands from its claims), else a general fix."""
    entry = explain(reply)
    sp_fix = service_principal_fix(claims, account)
    if entry is not None and entry.key == "ms-auth-5-7-3" and sp_fix:
        return sp_fix
    if entry is not None:
        return entry.render(account=account.name, mailbox=account.mailbox, credentials=account.credentials)
    scope = {"smtp": "SMTP.Send", "pop3": "POP.AccessAsUser.All"}.get(kind, "IMAP.AccessAsUser.All")
    return (f"make sure the sign-in was done as {account.mailbox} (run `relay authorize {account.name}` "
            f"again), that the app registration has the {scope} permission (or the Gmail scope), and "
            f"that {kind.upper()} access is enabled for the mailbox")


def print_report(results: list[AccountCheck]) -> None:
    """Print the table, each failure's fix, and a one-line verdict."""
    rows = [("ACCOUNT", "TOKEN", "SMTP", "POP3", "IMAP", "VERDICT")]
    for r in results:
        rows.append((r.account, r.oauth, r.smtp, r.pop3, r.imap, "BROKEN" if r.broken else "OK"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    warnings = [warning for r in results for warning in r.warnings]
    if warnings:
        print("\nWarnings:")
        for warning in warnings:
            print(f"  - {warning}")
    fixes = [fix for r in results for fix in r.fixes]
    if fixes:
        print("\nTo fix:")
        for fix in fixes:
            print(f"  - {fix}")
    broken = sum(r.broken for r in results)
    print(f"\n{'All accounts OK.' if not broken else f'{broken} of {len(results)} account(s) broken.'}")

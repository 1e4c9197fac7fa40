"""The parts RelayApp wires for each configuration generation, and what it logs when one starts.

Split from relay.app (logger "relay.app" kept): the generation record, the Graph service, listener
start with bind retries, and the start-up lines per listener and per account.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from relay.config.model import ListenerConfig, RelayConfig, UpstreamEndpoint
from relay.errors import RelayError
from relay.tokens.manager import AccountTokenStatus, TokenManager

log = logging.getLogger("relay.app")

BIND_RETRY_DELAY_S = 0.05


@dataclass
class Generation:
    """One configuration's running parts; a reload replaces the whole generation."""

    config: RelayConfig
    tokens: TokenManager
    servers: dict[str, object] = field(default_factory=dict)  # "smtp"/"pop3"/"imap" -> server
    graph: Any = None  # relay.graph.client.GraphService when an account uses Graph


def graph_service(config: RelayConfig, tokens: TokenManager) -> Any:
    """The shared Graph service when an account sends or reads through Graph, else None."""
    if not any("graph" in (a.send_via, a.read_via) for a in config.accounts.values()):
        return None
    from relay.graph.client import GraphService  # noqa: PLC0415 - only relays that use Graph

    return GraphService(tokens)


async def start_with_retries(server: object, attempts: int) -> None:
    """Start a listener, retrying a port still held by the listener it replaces."""
    for attempt in range(attempts):
        try:
            await server.start()  # type: ignore[attr-defined]
            return
        except OSError:
            if attempt + 1 >= attempts:
                raise
            await asyncio.sleep(BIND_RETRY_DELAY_S)


def log_listener(name: str, listener: ListenerConfig, port: int) -> None:
    # Mirrors LocalAuthenticator.plaintext_auth_allowed: TLS, a loopback-bound listener, or a listed network.
    from relay.localauth import is_loopback  # noqa: PLC0415 - keeps `relay --help` fast

    nets = ", ".join(str(n) for n in listener.allow_plaintext_auth_from)
    if is_loopback(listener.host):
        plain = "any client (bound to loopback)"
    else:
        plain = f"clients in {nets}" if nets else "nobody (set allow_plaintext_auth_from or use TLS)"
    log.info("listener %s on %s:%d (tls: %s; AUTH without TLS allowed for %s)",
             name, listener.host, port, listener.tls, plain)


def _endpoint(endpoint: UpstreamEndpoint | None) -> str:
    if endpoint is None:
        return "off"
    return f"{endpoint.host}:{endpoint.port} ({endpoint.tls})"


def describe_token(status: AccountTokenStatus | None) -> str:
    """A short token-state phrase for logs and tables (never a token)."""
    if status is None:
        return "unknown"
    if status.state == "valid" and status.valid_until is not None:
        return f"valid until {status.valid_until.isoformat(timespec='seconds')}"
    if status.state in ("not authorized", "needs authorize"):
        return f"{status.state}: run `relay authorize {status.account}`"
    return status.state


async def log_accounts(config: RelayConfig, tokens: TokenManager) -> None:
    try:
        statuses = {s.account: s for s in await tokens.status()}
    except RelayError as exc:
        log.error("cannot read the token status: %s", exc)
        statuses = {}
    for account in config.accounts.values():
        status = statuses.get(account.name)
        level = logging.WARNING if status and status.state in ("not authorized", "needs authorize") \
            else logging.INFO
        log.log(level, "account %s: login %s -> %s via %s; smtp %s; pop3 %s; imap %s; token %s",
                account.name, account.username, account.mailbox, account.credentials,
                _endpoint(account.smtp), _endpoint(account.pop3), _endpoint(account.imap),
                describe_token(status))
    # verify_tls: false is warned about by each listener for its own endpoints, once, at start.

"""`relay check` for Graph accounts: can the relay send and read through Microsoft Graph?

Sending is probed with an empty ``sendMail`` (nothing can be sent): Graph checks the token's
audience, the Mail.Send permission and the mailbox before it looks at the body, so ``400`` (the
empty body refused) means everything the relay needs is in place; 401/403/404/429 name what is
not. (That Graph checks permission before the body is observed behaviour, not documented.)
Reading is probed with ``GET mailFolders/inbox`` (the Inbox's message count).
"""

from __future__ import annotations

from relay.config.model import AccountConfig
from relay.errors import GraphError, OAuthError, RelayError
from relay.graph.client import GraphService
from relay.tokens.source import TokenSource

CELLS = {401: "WRONG AUDIENCE", 403: "NO PERMISSION", 404: "NO MAILBOX", 429: "THROTTLED",
         503: "THROTTLED"}


def _cell(exc: RelayError) -> str:
    if isinstance(exc, GraphError):
        return CELLS.get(exc.status, f"HTTP {exc.status}")
    if isinstance(exc, OAuthError):
        return "NO GRAPH TOKEN"
    return "UNREACHABLE"


async def check_graph(tokens: TokenSource, account: AccountConfig,
                      fixes: list[str]) -> tuple[str | None, str | None]:
    """(send cell, read cell) for the account's Graph directions (None: not via Graph)."""
    service = GraphService(tokens)
    client = service.client_for(account)
    send = read = None
    try:
        if account.send_via == "graph":
            try:
                await client.request("POST", f"{client.user_path}/sendMail", what="check sendMail",
                                     content=b"", headers={"Content-Type": "text/plain"}, expect=(400,))
                send = "graph: ok"
            except RelayError as exc:
                send = "graph: " + _cell(exc)
                fixes.append(f"{account.name} (graph send): {exc}")
        if account.read_via == "graph":
            try:
                response = await client.request("GET", f"{client.user_path}/mailFolders/inbox"
                                                "?$select=totalItemCount", what="check the Inbox")
                count = response.json().get("totalItemCount")
                read = f"graph: ok ({count} in Inbox)" if isinstance(count, int) else "graph: ok"
            except RelayError as exc:
                read = "graph: " + _cell(exc)
                fixes.append(f"{account.name} (graph read): {exc}")
    finally:
        await service.close()
    return send, read

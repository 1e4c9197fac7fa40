"""Checks and resolution of the Graph upstream choice: ``send_via``, ``read_via``, ``accounts.X.graph``.

Called by `relay.configuration` for each account (the keys themselves are declared in
`relay.config.model`): a ``graph`` section without a Graph direction is an error, a Graph
account gets its settings with the defaults and the Graph URL of its Microsoft cloud, plain http
is refused except to loopback, and credentials whose provider has no Graph scopes must list them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from relay.config.model import AccountConfig, CredentialsConfig, GraphConfig

Problem = Callable[[str, str], None]


def default_graph_url(creds: CredentialsConfig | None) -> str:
    """Graph's v1.0 root in the credentials' Microsoft cloud (worldwide unless ``cloud`` says)."""
    from relay.providers.microsoft import cloud_hosts  # noqa: PLC0415

    cloud = creds.cloud if creds is not None and creds.provider == "microsoft" else "global"
    try:
        return f"{cloud_hosts(cloud).graph}/v1.0"
    except KeyError:  # an unknown cloud is reported by the credentials' own check
        return f"{cloud_hosts('global').graph}/v1.0"


def resolve_graph(account: AccountConfig, path: str, creds: CredentialsConfig | None,
                  provider: type | None, problem: Problem) -> GraphConfig | None:
    """The account's Graph settings (None without a Graph direction); problems reported by path."""
    uses_graph = "graph" in (account.send_via, account.read_via)
    if not uses_graph:
        if account.graph is not None:
            problem(f"{path}.graph", "is set but neither send_via nor read_via is 'graph'; set "
                    "send_via: graph and/or read_via: graph, or remove it")
        return None
    graph = account.graph or GraphConfig()
    url = (graph.url or default_graph_url(creds)).rstrip("/")
    if url.startswith("http://"):
        from relay.localauth import is_loopback  # noqa: PLC0415

        host = url.split("/", 3)[2].rsplit(":", 1)[0].strip("[]")
        if not is_loopback(host):
            problem(f"{path}.graph.url", f"'{url}' would send the access token unencrypted; use https "
                    "(plain http is allowed only to loopback hosts)")
    if graph.ca_file is not None and not graph.ca_file.is_file():
        problem(f"{path}.graph.ca_file", f"file {graph.ca_file} does not exist")
    if creds is not None and creds.graph_scopes is None and provider is not None \
            and not getattr(provider, "graph_delegated_scopes", ()):
        problem(f"credentials.{creds.name}.graph_scopes",
                f"account '{account.name}' uses Graph but provider '{creds.provider}' has no Graph "
                "scopes: list them here (e.g. https://graph.microsoft.com/Mail.Send offline_access)")
    return dataclasses.replace(graph, url=url)

"""The YAML of the Graph upstream choice: ``send_via``, ``read_via`` and ``accounts.X.graph``.

Kept apart from the loader's general helpers; it uses them (``builder``) so problems carry the
same YAML paths and wording as every other setting.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from relay.config.model import CredentialsConfig, GraphConfig

if TYPE_CHECKING:
    from relay.config.loader import _Builder

SEND_VIA = ("smtp", "graph")
READ_VIA = ("pop3", "graph")
DELETE_MODES = ("move", "delete")
LARGE_MESSAGES = ("refuse", "upload_session")
GRAPH_KEYS = tuple(f.name for f in dataclasses.fields(GraphConfig))
# Graph carries message content in one request; below this no useful message fits.
MIN_REQUEST_BYTES = 64 * 1024


def graph_choice(builder: _Builder, data: dict[str, Any], path: str,
                 creds: CredentialsConfig | None,
                 provider_class: type | None) -> tuple[str, str, GraphConfig | None]:
    """(send_via, read_via, graph settings) of one account, problems reported with their path."""
    send_via = builder.choice(data.get("send_via"), f"{path}.send_via", SEND_VIA, "smtp")
    read_via = builder.choice(data.get("read_via"), f"{path}.read_via", READ_VIA, "pop3")
    uses_graph = "graph" in (send_via, read_via)
    raw = data.get("graph")
    if raw is not None and not uses_graph:
        builder.problem(f"{path}.graph", "is set but neither send_via nor read_via is 'graph'; "
                        "set send_via: graph and/or read_via: graph, or remove it")
    if not uses_graph:
        return send_via, read_via, None
    graph = _graph_settings(builder, raw, f"{path}.graph", _default_url(creds))
    if creds is not None and creds.graph_scopes is None:
        has_defaults = bool(getattr(provider_class, "graph_delegated_scopes", ()))
        if provider_class is not None and not has_defaults:
            builder.problem(f"credentials.{creds.name}.graph_scopes",
                            f"account '{path.rsplit('.', maxsplit=1)[-1]}' uses Graph but provider "
                            f"'{creds.provider}' has no Graph scopes: list them here (e.g. "
                            "https://graph.microsoft.com/Mail.Send offline_access)")
    return send_via, read_via, graph


def _default_url(creds: CredentialsConfig | None) -> str:
    """Graph's v1.0 root in the credentials' Microsoft cloud (worldwide unless ``cloud`` says)."""
    microsoft = creds is not None and creds.provider == "microsoft"
    cloud = getattr(creds, "cloud", "global") if microsoft else "global"
    from relay.providers.microsoft import cloud_hosts  # noqa: PLC0415 - the loader imports this module

    try:
        return f"{cloud_hosts(cloud).graph}/v1.0"
    except KeyError:  # an unknown cloud is reported by the credentials' own check
        return GraphConfig.url


def _graph_settings(builder: _Builder, value: object, path: str, default_url: str) -> GraphConfig:
    data = builder.mapping(value, path, GRAPH_KEYS) or {}
    defaults = GraphConfig(url=default_url)
    url = builder.url(data.get("url"), f"{path}.url") or defaults.url
    if url.startswith("http://"):
        from relay.localauth import is_loopback  # noqa: PLC0415 - the loader imports this module

        host = url.split("/", 3)[2].rsplit(":", 1)[0].strip("[]")
        if not is_loopback(host):
            builder.problem(f"{path}.url", f"'{url}' would send the access token unencrypted; "
                            "use https (plain http is allowed only to loopback hosts)")
    request_bytes = builder.number(data.get("max_request_bytes"), f"{path}.max_request_bytes",
                                   defaults.max_request_bytes, integer=True)
    if request_bytes < MIN_REQUEST_BYTES:
        builder.problem(f"{path}.max_request_bytes", f"must be at least {MIN_REQUEST_BYTES} "
                        f"(got {request_bytes}); Graph's documented limit is 4 MB")
        request_bytes = defaults.max_request_bytes
    ca_file = builder.file_path(data.get("ca_file"), f"{path}.ca_file")
    if ca_file is not None and not ca_file.is_file():
        builder.problem(f"{path}.ca_file", f"file {ca_file} does not exist")
    return GraphConfig(
        url=url.rstrip("/"),
        max_request_bytes=request_bytes,
        large_messages=builder.choice(data.get("large_messages"), f"{path}.large_messages",  # type: ignore[arg-type]
                                      LARGE_MESSAGES, defaults.large_messages),
        max_messages=builder.number(data.get("max_messages"), f"{path}.max_messages",
                                    defaults.max_messages, integer=True),
        page_size=min(1000, builder.number(data.get("page_size"), f"{path}.page_size",
                                           defaults.page_size, integer=True)),
        delete=builder.choice(data.get("delete"), f"{path}.delete", DELETE_MODES,  # type: ignore[arg-type]
                              defaults.delete),
        timeout_s=builder.number(data.get("timeout_s"), f"{path}.timeout_s", defaults.timeout_s,
                                 integer=False),
        ca_file=ca_file,
        verify_tls=builder.boolean(data.get("verify_tls"), f"{path}.verify_tls", True),
    )

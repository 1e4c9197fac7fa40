"""Opening an upstream stream (TCP, TLS, STARTTLS) and translating its failures, in one place.

Every OSError, ssl error, timeout or connection cut that happens while talking to an upstream
leaves through `translate_failure` as `relay.errors.UpstreamUnavailable` naming the server and
the step; `relay.errors` exceptions pass unchanged. Both protocol clients use this, so a failure
reads the same for SMTP and POP3.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from relay.config.model import UpstreamEndpoint
from relay.errors import RelayError, UpstreamUnavailable
from relay.tlsutil import client_context
from relay.upstream.reader import LeanStreamReader, open_lean_connection

Stream = tuple[LeanStreamReader, asyncio.StreamWriter]


def where(endpoint: UpstreamEndpoint) -> str:
    """``host:port`` of an endpoint, for messages."""
    return f"{endpoint.host}:{endpoint.port}"


def tls_context(endpoint: UpstreamEndpoint) -> ssl.SSLContext | None:
    """The endpoint's client TLS context (cached per endpoint), or None for ``tls: none``."""
    return client_context(endpoint) if endpoint.tls != "none" else None


def set_nodelay(sock: socket.socket | None) -> None:
    """Disable Nagle: mail protocols are request/reply, small writes must leave at once (used for
    upstream connections and for the clients of both local listeners)."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # not fatal: only latency
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def open_stream(endpoint: UpstreamEndpoint, *, read_limit: int) -> Stream:
    """Connect to ``endpoint`` (TLS first for ``tls: implicit``) with TCP_NODELAY set; the reader
    is a `LeanStreamReader`.

    No timeout of its own (the caller bounds the whole connect phase) and no translation: the
    caller translates with `translate_failure`, naming the protocol step.
    """
    implicit = endpoint.tls == "implicit"
    reader, writer = await open_lean_connection(
        endpoint.host, endpoint.port, limit=read_limit,
        ssl=tls_context(endpoint) if implicit else None,
        server_hostname=endpoint.host if implicit else None)
    set_nodelay(writer.get_extra_info("socket"))
    return reader, writer


async def start_tls(writer: asyncio.StreamWriter, endpoint: UpstreamEndpoint) -> None:
    """Upgrade a connection after the upstream agreed to STARTTLS/STLS (verifying by default)."""
    ctx = tls_context(endpoint)
    assert ctx is not None, "start_tls is only called for tls: starttls"
    await writer.start_tls(ctx, server_hostname=endpoint.host)


def translate_failure(exc: BaseException, *, server: str, step: str,
                      account: str | None = None) -> BaseException:
    """The `relay.errors` exception for a low-level failure during ``step`` with ``server``
    (``"upstream SMTP server host:587"``); relay errors and anything unexpected pass unchanged."""
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamUnavailable(f"{server} timed out during {step}", account=account)
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return UpstreamUnavailable(f"TLS with {server} failed during {step}: {exc}", account=account)
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return UpstreamUnavailable(f"{server} closed the connection during {step}", account=account)
    if isinstance(exc, OSError):
        return UpstreamUnavailable(f"connection to {server} failed during {step}: {exc}",
                                   account=account)
    return exc

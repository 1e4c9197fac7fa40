"""Listener backlog and the cached upstream TLS contexts."""

from __future__ import annotations

import ssl
from pathlib import Path

from relay.config.model import UpstreamEndpoint
from relay.listening import MIN_BACKLOG, listen_backlog
from relay.tlsutil import client_context, generate_self_signed


def test_backlog_covers_a_burst_of_max_connections() -> None:
    """The listen backlog is never below the connection limit nor asyncio's too-small default."""
    assert listen_backlog(10) == max(MIN_BACKLOG, listen_backlog(10))
    assert listen_backlog(5000) >= 5000


def test_client_context_is_cached_per_endpoint_and_verifies(tmp_path: Path) -> None:
    """Equal endpoints share one verifying context; a CA file or verify_tls change gives another."""
    cert, _ = generate_self_signed(tmp_path)
    a = UpstreamEndpoint("smtp.example.net", 587, "starttls")
    ctx = client_context(a)
    assert client_context(UpstreamEndpoint("smtp.example.net", 587, "starttls")) is ctx
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with_ca = client_context(UpstreamEndpoint("smtp.example.net", 587, "starttls", ca_file=cert))
    assert with_ca is not ctx and with_ca.verify_mode == ssl.CERT_REQUIRED
    insecure = client_context(UpstreamEndpoint("smtp.example.net", 587, "starttls", verify_tls=False))
    assert insecure.verify_mode == ssl.CERT_NONE and ctx.verify_mode == ssl.CERT_REQUIRED

"""`relay health`: exit 0 when the relay is healthy.

With an ``admin:`` listener configured it asks ``/readyz`` (listeners accepting, token store
readable, every account with a usable grant) and prints each reason when not ready; with
``--live`` only ``/healthz`` (the event loop answers). Without one it probes every enabled listener's
greeting (SMTP 220, POP3 +OK) and says QUIT: no login, so it never counts as a failed
authentication. Used by the container HEALTHCHECK and by monitoring.
"""

from __future__ import annotations

import argparse
import socket
import ssl

from relay.commands._ops import add_config_argument, connect_host, load_config_file
from relay.config.model import AdminConfig, ListenerConfig

EXPECTED_GREETING = {"smtp": b"220", "pop3": b"+OK", "imap": b"* OK"}
QUIT = {"smtp": b"QUIT\r\n", "pop3": b"QUIT\r\n", "imap": b"h LOGOUT\r\n"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `relay health` to the CLI."""
    p = subparsers.add_parser("health", help="exit 0 when the local listeners answer (for health checks)")
    add_config_argument(p)
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for each greeting (5)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, only set the exit code")
    p.add_argument("--live", action="store_true",
                   help="with an admin listener: only check that the relay answers (/healthz), not "
                        "that every account is ready (/readyz)")
    p.add_argument("--greetings", action="store_true",
                   help="probe the mail listeners' greetings even when an admin listener is configured")
    p.set_defaults(func=cmd_health)


def probe(kind: str, listener: ListenerConfig, timeout_s: float) -> tuple[bool, str]:
    """Connect to one listener and read its greeting; return (healthy, what was seen)."""
    host = connect_host(listener.host)
    try:
        with socket.create_connection((host, listener.port), timeout=timeout_s) as raw:
            sock: socket.socket = raw
            if listener.tls == "implicit":
                ctx = ssl.create_default_context()
                # Our own listener, often with a self-signed certificate: only liveness is checked here.
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(raw, server_hostname=host)
            greeting = _read_line(sock)
            if greeting.startswith(EXPECTED_GREETING[kind]):
                try:
                    sock.sendall(QUIT[kind])
                    _read_line(sock)
                except OSError:
                    pass  # the greeting is what counts
                return True, greeting.decode("utf-8", "replace").strip()[:80]
            return False, f"unexpected greeting {greeting[:80]!r}"
    except TimeoutError:
        return False, f"no greeting within {timeout_s:g} s"
    except OSError as exc:
        return False, f"cannot connect: {exc.strerror or exc}"


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < 1024:
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def cmd_health(args: argparse.Namespace) -> int:
    """Probe every enabled listener; 0 when all answer, 1 otherwise."""
    config = load_config_file(args.config)
    if config.admin is not None and not args.greetings:
        return _admin_health(config.admin, args)
    listeners = [(kind, getattr(config.listen, kind)) for kind in ("smtp", "pop3", "imap")]
    enabled = [(kind, listener) for kind, listener in listeners if listener.enabled]
    healthy = bool(enabled)
    if not enabled and not args.quiet:
        print("unhealthy: no listener is enabled")
    for kind, listener in enabled:
        ok, seen = probe(kind, listener, args.timeout)
        healthy = healthy and ok
        if not args.quiet:
            where = f"{connect_host(listener.host)}:{listener.port}"
            print(f"{kind} {where}: {'ok' if ok else 'FAILED'} ({seen})")
    return 0 if healthy else 1


def _admin_health(admin: AdminConfig, args: argparse.Namespace) -> int:
    """Ask the admin listener: /healthz with --live, else /readyz (reasons printed)."""
    from relay.commands._admin_client import AdminUnreachable, admin_get  # noqa: PLC0415

    path = "/healthz" if args.live else "/readyz"
    try:
        answer = admin_get(admin, path, args.timeout)
    except AdminUnreachable as exc:
        if not args.quiet:
            print(f"unhealthy: {exc}")
        return 1
    healthy = answer.status == 200
    if not args.quiet:
        if args.live:
            print("alive" if healthy else f"unhealthy: {path} answered HTTP {answer.status}")
        elif healthy:
            print("ready")
        else:
            reasons = answer.body.get("reasons") if isinstance(answer.body, dict) else None
            print(f"not ready ({path} answered HTTP {answer.status}):")
            for reason in reasons or [f"HTTP {answer.status}"]:
                print(f"  - {reason}")
    return 0 if healthy else 1

"""Socket and descriptor settings shared by the local listeners.

- `listen_backlog`: the kernel's queue of finished handshakes, sized for a burst of
  max_connections.
- `accept_batch` / `widen_backlog`: asyncio's selector loop uses the backlog passed to
  create_server both for listen() and as the number of accept() calls per wake-up. Out of file
  descriptors, each of those calls fails, logs an ERROR and schedules a retry: with a backlog of
  4096 that is 100% CPU and tens of thousands of log lines a second. So the server is created with
  a small batch and the socket's listen() backlog widened afterwards. uvloop takes the backlog for
  listen() only.
- `fit_fd_limit`: at start, the soft RLIMIT_NOFILE is raised towards the hard limit to what the
  limits need (a client and an upstream connection per session, on each listener, plus a reserve);
  if the hard limit is lower, max_connections is lowered to fit, with a WARNING.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import socket
from collections.abc import Callable

from relay.config.model import LimitsConfig

log = logging.getLogger("relay")

MIN_BACKLOG = 1024
ACCEPT_BATCH = 16
FD_RESERVE = 64  # logs, the token store, token HTTP connections, the admin/metrics listener ...
FDS_PER_SESSION = 2  # the client's socket and the upstream's

GetLimit = Callable[[], tuple[int, int]]
SetLimit = Callable[[int, int], None]


def listen_backlog(max_connections: int) -> int:
    """The listen() backlog for a listener that accepts up to ``max_connections`` at once.

    asyncio's default of 100 lets the kernel drop the final ACK of a burst of connects: the client
    believes it is connected and waits for a greeting the relay never sees. The kernel caps the
    value at net.core.somaxconn.
    """
    return max(max_connections, MIN_BACKLOG, getattr(socket, "SOMAXCONN", 128))


def accept_batch(loop: asyncio.AbstractEventLoop, max_connections: int) -> int:
    """The backlog to pass to create_server/start_server on ``loop`` (see the module docstring)."""
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return ACCEPT_BATCH
    return listen_backlog(max_connections)


def widen_backlog(server: asyncio.AbstractServer, max_connections: int) -> None:
    """Give the server's sockets the full listen() backlog (after `accept_batch`)."""
    for transport_socket in getattr(server, "sockets", ()):
        # asyncio hands out TransportSocket wrappers without listen(): borrow the descriptor.
        sock = socket.socket(fileno=transport_socket.fileno())
        try:
            sock.listen(listen_backlog(max_connections))
        finally:
            sock.detach()


def _get_nofile() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _set_nofile(soft: int, hard: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def fit_fd_limit(limits: LimitsConfig, *, listeners: int, get: GetLimit = _get_nofile,
                 set: SetLimit = _set_nofile) -> LimitsConfig:
    """Raise the soft descriptor limit to what ``limits`` need, else return lower max_connections."""
    need = max(1, listeners) * FDS_PER_SESSION * limits.max_connections + FD_RESERVE
    soft, hard = get()
    unlimited = hard == resource.RLIM_INFINITY
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if unlimited else min(hard, need)
        try:
            set(target, hard)
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the soft RLIMIT_NOFILE to %d: %s", target, exc)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return limits
    fitting = max(1, (soft - FD_RESERVE) // (max(1, listeners) * FDS_PER_SESSION))
    log.warning("limits.max_connections %d needs %d file descriptors but the limit is %d (hard %s): "
                "using max_connections %d; raise the limit (`ulimit -n`, systemd LimitNOFILE=, "
                "docker --ulimit nofile=) or lower limits.max_connections",
                limits.max_connections, need, soft, "unlimited" if unlimited else hard, fitting)
    return dataclasses.replace(limits, max_connections=fitting)

"""systemd's notify protocol (sd_notify): READY, RELOADING, STOPPING, STATUS and WATCHDOG datagrams.

One datagram per message to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket);
without the variable nothing is sent, like sd_notify(3). Errors are logged, never raised: the relay
must not stop because the service manager went away. See PROTOCOLS.md 9.8.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("relay.sdnotify")

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line


def ready(status: str | None = None) -> str:
    """Start-up or reload finished."""
    return "READY=1" + (f"\n{_status(status)}" if status else "")


def reloading() -> str:
    """A reload begins (must be followed by READY=1); with the monotonic time systemd 253+ wants."""
    now_usec = time.monotonic_ns() // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={now_usec}\n{_status('reloading the configuration')}"


def stopping() -> str:
    """Shutdown begins."""
    return "STOPPING=1\n" + _status("stopping: draining open sessions")


def socket_address(value: str) -> str | bytes | None:
    """The AF_UNIX address of a NOTIFY_SOCKET value (``@x`` -> abstract ``\\0x``); None if unusable."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None  # vsock: and anything else: not supported here


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` to the service manager; True when sent, False when not under systemd."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_SOCKET)
    if not value:
        return False
    address = socket_address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying systemd", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", value, exc)
        return False
    return True


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half the watchdog timeout systemd asks for (sd_watchdog_enabled), or None when there is none."""
    env = os.environ if environ is None else environ
    usec = env.get(ENV_WATCHDOG_USEC, "")
    pid = env.get(ENV_WATCHDOG_PID, "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def _watchdog_loop(interval_s: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


def start_watchdog() -> asyncio.Task[None] | None:
    """Start sending WATCHDOG=1 every half timeout (on the event loop: a hung loop stops it)."""
    interval_s = watchdog_interval_s()
    if interval_s is None or not os.environ.get(ENV_SOCKET):
        return None
    return asyncio.get_running_loop().create_task(_watchdog_loop(interval_s), name="sd-watchdog")

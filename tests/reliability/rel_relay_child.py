"""A relay (SMTP + POP3 + TokenManager) in its own process, for signal, restart and memory tests.

Usage: ``python rel_relay_child.py SPEC.json``; the spec names the upstreams, the store and the
login; the store key comes from $RELAY_STORE_KEY. Prints ``PORTS <smtp> <pop3>`` once listening.
SIGTERM stops gracefully (sessions finish within ``grace_s``), like `relay serve`; ``STOPPING`` is
printed when the signal has been handled and the listeners are closed. Not a test module.

Store-latency options: ``slow_fsync_s`` makes every fsync of the token store take that long (a slow
disk); ``lag_probe`` measures the loop's scheduling lag, printed as ``LAG <max_ms> <samples>`` on
SIGUSR2 (then reset); SIGUSR1 forces a token refresh and prints ``REFRESHED ok`` (or the error) when saved.
``nice`` (e.g. -10, needs root; ignored otherwise) lifts the child above other load on a shared CI
machine, so the lag measured is the relay's own and not the scheduler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for support/

from support.relay_harness import loopback, relay_config

from relay import eventloop
from relay.config.model import (
    AccountConfig,
    CredentialsConfig,
    LimitsConfig,
    ListenerConfig,
    UpstreamEndpoint,
)
from relay.errors import RelayError
from relay.pop3.server import Pop3ProxyServer
from relay.smtp.server import SmtpRelayServer
from relay.tokens.keys import load_key
from relay.tokens.manager import TokenManager
from relay.tokens.store import EncryptedFileStore


class OneLogin:
    """Authenticator for one local login (plain compare; the password module is tested elsewhere)."""

    def __init__(self, account: AccountConfig, password: str) -> None:
        self.account = account
        self.password = password

    async def authenticate(self, username: str, password: str, client_ip: str) -> AccountConfig | None:
        ok = username == self.account.username and password == self.password
        return self.account if ok else None

    def plaintext_auth_allowed(self, listener: ListenerConfig, client_ip: str, tls_active: bool) -> bool:
        return tls_active or ipaddress.ip_address(client_ip).is_loopback

    def trusted_account_for(self, client_ip: str) -> AccountConfig | None:
        return None


async def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("nice"):
        with contextlib.suppress(PermissionError):
            os.nice(int(spec["nice"]))
    ca = Path(spec["ca_file"])
    account = AccountConfig(
        name="rel", username=spec["username"], password_hash=None, mailbox=spec["mailbox"],
        credentials="sandbox",
        smtp=UpstreamEndpoint("127.0.0.1", spec["smtp_port"], "starttls", ca_file=ca),
        pop3=UpstreamEndpoint("127.0.0.1", spec["pop3_port"], "implicit", ca_file=ca))
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=spec["client_id"],
                              scopes=tuple(spec["scopes"]), token_url=spec["token_url"])
    config = relay_config(
        accounts=[account], credentials=creds, token_store=Path(spec["store"]),
        smtp_listener=loopback(port=spec.get("listen_smtp", 0)),
        pop3_listener=loopback(port=spec.get("listen_pop3", 0)),
        limits=LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                            upstream_command_timeout_s=10, upstream_data_timeout_s=10,
                            smtp_command_timeout_s=spec.get("command_timeout_s", 300.0),
                            pop3_idle_timeout_s=spec.get("command_timeout_s", 600.0)))
    store = EncryptedFileStore(Path(spec["store"]), load_key(config.token_store),
                               fsync=slow_fsync(float(spec.get("slow_fsync_s", 0.0)))).open()
    tokens = TokenManager(config, store, retry_attempts=1)
    auth = OneLogin(account, spec["password"])
    smtp = SmtpRelayServer(config, tokens, auth, hostname="relay.test")
    pop3 = Pop3ProxyServer(config, tokens, auth)  # type: ignore[arg-type]
    await smtp.start()
    await pop3.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    background: set[asyncio.Task[None]] = set()
    if spec.get("lag_probe"):
        probe = LagProbe()
        background.add(asyncio.create_task(probe.run()))
        loop.add_signal_handler(signal.SIGUSR2, probe.report)
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: background.add(asyncio.create_task(refresh(tokens, "rel"))))
    print(f"PORTS {smtp.port} {pop3.port}", flush=True)
    await stop.wait()
    smtp.close_listener()  # as `relay serve` does on the signal: refuse new connections at once
    pop3.close_listener()
    print("STOPPING", flush=True)  # the signal is handled and the listeners are closed
    grace_s = float(spec.get("grace_s", 10.0))
    await asyncio.gather(smtp.stop(grace_s), pop3.stop(grace_s))
    await tokens.close()
    return 0


def slow_fsync(delay_s: float) -> Callable[[int], None]:
    """os.fsync, after ``delay_s`` (it runs in the store's worker thread, never on the loop)."""
    def fsync(fd: int) -> None:
        time.sleep(delay_s)
        os.fsync(fd)
    return fsync


async def refresh(tokens: TokenManager, account: str) -> None:
    """Force a refresh (as when the upstream refuses the current token); report when saved."""
    try:
        await tokens.force_refresh(account, rejected=await tokens.get_token(account))
    except RelayError as exc:
        print(f"REFRESHED error {exc}", flush=True)
    else:
        print("REFRESHED ok", flush=True)


class LagProbe:
    """The loop's lag: how late a 5 ms sleep wakes up, at most.

    ``max_lag_s`` is the raw figure. ``max_own_lag_s`` subtracts the time the loop thread sat in
    the kernel's run queue meanwhile (``/proc/thread-self/schedstat``): on a shared, overloaded CI
    machine that is the scheduler's delay, not the relay's. Time blocked on a lock, on I/O or on
    the GIL is not run-queue time, so a store that blocks the loop still shows in full.
    """

    def __init__(self) -> None:
        self.max_lag_s = 0.0
        self.max_own_lag_s = 0.0
        self.samples = 0

    async def run(self) -> None:
        while True:
            start, queued = time.perf_counter(), _run_queue_s()
            await asyncio.sleep(0.005)
            lag = time.perf_counter() - start - 0.005
            self.max_lag_s = max(self.max_lag_s, lag)
            self.max_own_lag_s = max(self.max_own_lag_s, lag - (_run_queue_s() - queued))
            self.samples += 1

    def report(self) -> None:
        """Print ``LAG <own ms> <samples> <raw ms>`` since the last report, and start over."""
        print(f"LAG {self.max_own_lag_s * 1000:.1f} {self.samples} {self.max_lag_s * 1000:.1f}", flush=True)
        self.max_lag_s, self.max_own_lag_s, self.samples = 0.0, 0.0, 0


def _run_queue_s() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (0 where Linux does not say)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


if __name__ == "__main__":
    sys.exit(eventloop.run(main(), eventloop.resolve(None)))  # the loop `relay serve` runs on

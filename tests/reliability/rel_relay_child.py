"""A relay (`RelayApp.run`, what `relay serve` runs) in its own process, for signal, restart and
memory tests.

Usage: ``python rel_relay_child.py SPEC.json``; the spec names the upstreams, the store and the
login; the store key comes from $RELAY_STORE_KEY. The child writes relay.yaml next to the store
(tests/support/app_harness.py), loads it with the real loader and runs RelayApp on it: SIGTERM
stops gracefully (sessions finish within ``grace_s``, limits.shutdown_grace_s) exactly as under
`relay serve`; the relay's log goes to stderr ("received SIGTERM" once the listeners are closed).
Prints ``PORTS <smtp> <pop3>`` once listening. Not a test module.

Store-latency options: ``slow_fsync_s`` makes every fsync of the token store take that long (a slow
disk); ``lag_probe`` measures the loop's scheduling lag, printed as ``LAG <max_ms> <samples>`` on
SIGUSR2 (then reset); SIGUSR1 forces a token refresh and prints ``REFRESHED ok`` (or the error) when saved.
``nice`` (e.g. -10, needs root; ignored otherwise) lifts the child above other load on a shared CI
machine, so the lag measured is the relay's own and not the scheduler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for support/

from support.app_harness import app_from_yaml, tokens_with
from support.relay_harness import loopback, relay_config

from relay import eventloop
from relay.app import RelayApp
from relay.config.model import AccountConfig, CredentialsConfig, LimitsConfig, RelayConfig, UpstreamEndpoint
from relay.errors import RelayError
from relay.passwords import hash_password
from relay.tokens.manager import TokenManager
from relay.tokens.store import EncryptedFileStore, decode_key


def build_config(spec: dict[str, object]) -> RelayConfig:
    """One account ``rel`` (the spec's login) sending and reading through the spec's upstreams."""
    ca = Path(str(spec["ca_file"]))
    account = AccountConfig(
        name="rel", username=str(spec["username"]),
        password_hash=hash_password(str(spec["password"]), log2_n=10), mailbox=str(spec["mailbox"]),
        credentials="sandbox",
        smtp=UpstreamEndpoint("127.0.0.1", int(spec["smtp_port"]), "starttls", ca_file=ca),  # type: ignore[call-overload]
        pop3=UpstreamEndpoint("127.0.0.1", int(spec["pop3_port"]), "implicit", ca_file=ca))  # type: ignore[call-overload]
    creds = CredentialsConfig(name="sandbox", provider="generic", client_id=str(spec["client_id"]),
                              scopes=tuple(spec["scopes"]), token_url=str(spec["token_url"]),  # type: ignore[arg-type]
                              authorize_url=str(spec["authorize_url"]))
    return relay_config(
        accounts=[account], credentials=creds, token_store=Path(str(spec["store"])),
        smtp_listener=loopback(port=int(spec.get("listen_smtp", 0))),  # type: ignore[call-overload]
        pop3_listener=loopback(port=int(spec.get("listen_pop3", 0))),  # type: ignore[call-overload]
        limits=LimitsConfig(auth_failure_delay_s=0.05, upstream_connect_timeout_s=5,
                            upstream_command_timeout_s=10, upstream_data_timeout_s=10,
                            smtp_command_timeout_s=float(spec.get("command_timeout_s", 300.0)),  # type: ignore[arg-type]
                            pop3_idle_timeout_s=float(spec.get("command_timeout_s", 600.0)),  # type: ignore[arg-type]
                            shutdown_grace_s=float(spec.get("grace_s", 10.0))))  # type: ignore[arg-type]


async def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("nice"):
        with contextlib.suppress(PermissionError):
            os.nice(int(spec["nice"]))
    config = build_config(spec)
    key = os.environ["RELAY_STORE_KEY"]
    store = EncryptedFileStore(config.token_store.path, decode_key(key, "RELAY_STORE_KEY"),
                               fsync=slow_fsync(float(spec.get("slow_fsync_s", 0.0)))).open()
    app = app_from_yaml(config, config.token_store.path.parent, key=key, store=store,
                        tokens_factory=tokens_with(retry_attempts=1))
    running = asyncio.ensure_future(app.run())  # installs the SIGTERM/SIGINT/SIGHUP handlers
    await _listening(app, running)
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()
    if spec.get("lag_probe"):
        probe = LagProbe()
        background.add(asyncio.create_task(probe.run()))
        loop.add_signal_handler(signal.SIGUSR2, probe.report)
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: background.add(asyncio.create_task(refresh(app.tokens, "rel"))))
    print(f"PORTS {app.smtp_port} {app.pop3_port}", flush=True)
    code = await running
    await store.close()
    return code


async def _listening(app: RelayApp, running: asyncio.Future[int]) -> None:
    """Return once both listeners are bound (raise what `run` raised if it ended first)."""
    while app.smtp_port is None or app.pop3_port is None:
        if running.done():
            running.result()
            raise RuntimeError("the relay stopped before it listened")
        await asyncio.sleep(0.01)


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

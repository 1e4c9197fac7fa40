"""RelayApp: wires the token store, token manager, local authenticator and the listeners; signals.

- SIGTERM / SIGINT: stop accepting, let running sessions finish for ``limits.shutdown_grace_s``,
  close what is left, exit 0. A second signal during the grace period closes sessions at once.
- SIGHUP: re-read the configuration file (in a worker thread, with a deadline, so a slow or
  hostile file never stalls sessions). When it is valid, new listeners (and a new token manager
  over the same store) take over; sessions already running finish on the old ones. When it is
  invalid, unreadable, or the new listeners cannot start, the error is logged and the relay keeps
  listening with the running configuration (its listeners are restored if they were closed).
- With ``admin:`` the admin HTTP listener (relay.admin) serves /metrics, /healthz, /readyz and
  /status; with ``alerts:`` the alert monitor (relay.alerts) watches the accounts. Under systemd
  (``NOTIFY_SOCKET``) READY/RELOADING/STOPPING/WATCHDOG are sent (relay.sdnotify).

The reload lives in relay.app_reload (a mixin), the generation record and start-up logging in
relay.app_wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay import sdnotify
from relay.app_reload import ConfigLoader, ConfigReload
from relay.app_wiring import Generation, graph_service, log_accounts, log_listener, start_with_retries
from relay.config.model import ListenerConfig, RelayConfig
from relay.listening import fit_fd_limit
from relay.memory_release import release_when_idle
from relay.metrics import RelayMetrics
from relay.tokens.interface import TokenStore
from relay.tokens.manager import TokenManager
from relay.tokens.store import load_key, open_store_async

if TYPE_CHECKING:
    from relay.admin.report import ListenerState
    from relay.localauth import LocalAuthenticator
    from relay.smtp.delivery import DeliveryFactory
    from relay.spool.clock import Clock
    from relay.spool.service import SpoolService

log = logging.getLogger("relay.app")

TokensFactory = Callable[[RelayConfig, TokenStore], TokenManager]
"""Builds a generation's TokenManager (tests: retry timing, clocks); default: from the config."""
AuthenticatorFactory = Callable[[RelayConfig], "LocalAuthenticator"]
"""Builds a generation's local authenticator (tests: wrappers); default: from the config."""
RELOAD_TIMEOUT_S = 30.0  # reading + validating the YAML; it takes milliseconds normally


class RelayApp(ConfigReload):
    """The running relay: ``await app.start()`` then ``await app.stop()``, or ``await app.run()``."""

    def __init__(self, config: RelayConfig, *, store: TokenStore | None = None,
                 loader: ConfigLoader | None = None, reload_timeout_s: float = RELOAD_TIMEOUT_S,
                 tokens_factory: TokensFactory | None = None,
                 authenticator_factory: AuthenticatorFactory | None = None,
                 spool_clock: Clock | None = None) -> None:
        self.config = config
        self._tokens_factory = tokens_factory
        self._spool_clock = spool_clock  # tests: a clock they move (relay.spool.clock.ManualClock)
        self._authenticator_factory = authenticator_factory
        self._store = store
        self._owns_store = False
        self._loader = loader
        self._reload_timeout_s = reload_timeout_s
        self.exit_code = 0  # 1 when the relay stopped because it could not listen any more
        self._current: Generation | None = None
        self._stopping: Generation | None = None
        self._draining: set[asyncio.Future[Any]] = set()  # reloads, drains, forced stops
        self._stop_requested = asyncio.Event()
        self._signals = 0
        self._reload_lock = asyncio.Lock()
        self.started_at = time.time()
        # Metrics are collected only for the admin listener and the alerts: otherwise the mail
        # paths report to relay.metrics.NULL_OBSERVER.
        self.metrics: RelayMetrics | None = None
        if config.admin is not None or config.alerts is not None:
            self.metrics = RelayMetrics(config.accounts)
        self._admin: object | None = None
        self._alerts: object | None = None
        self.spool: SpoolService | None = None  # started when an account has delivery: spool

    # --- properties -----------------------------------------------------------------------------

    @property
    def smtp_port(self) -> int | None:
        """The bound SMTP port (None when the listener is disabled or not started)."""
        return self._port("smtp")

    @property
    def pop3_port(self) -> int | None:
        """The bound POP3 port (None when the listener is disabled or not started)."""
        return self._port("pop3")

    @property
    def imap_port(self) -> int | None:
        """The bound IMAP port (None when the listener is disabled or not started)."""
        return self._port("imap")

    @property
    def tokens(self) -> TokenManager:
        """The current token manager."""
        assert self._current is not None, "RelayApp is not started"
        return self._current.tokens

    @property
    def admin_port(self) -> int | None:
        """The bound admin listener port (None when it is not configured)."""
        return getattr(self._admin, "port", None)

    def listener_states(self) -> list[ListenerState]:
        """The running mail listeners (for /status and /readyz)."""
        from relay.admin.report import ListenerState  # noqa: PLC0415 - only with an admin listener

        states: list[ListenerState] = []
        gen = self._current
        if gen is None:
            return states
        for name, server in gen.servers.items():
            listener: ListenerConfig = getattr(gen.config.listen, name)
            raw = getattr(server, "_server", None)  # the asyncio.Server of SmtpRelayServer / Pop3ProxyServer
            serving = bool(raw is not None and raw.is_serving())
            active = getattr(server, "active_sessions", None)
            if active is None:
                active = len(getattr(server, "_tasks", ()))
            states.append(ListenerState(name, listener.host, int(getattr(server, "port", 0)), listener.tls,
                                        serving, int(active)))
        return states

    def pool_sessions(self) -> dict[str, int]:
        """Pooled upstream SMTP sessions by state (empty when pooling is off)."""
        gen = self._current
        smtp = gen.servers.get("smtp") if gen else None
        pool = getattr(getattr(smtp, "handler", None), "pool", None)
        if pool is None or gen is None:
            return {}
        total = sum(pool.sessions(name) for name in gen.config.accounts)
        idle = sum(pool.idle_sessions(name) for name in gen.config.accounts)
        return {"idle": idle, "in_use": total - idle}

    def listener(self, name: str) -> object | None:
        """The running listener server ("smtp", "pop3", "imap"), None when disabled or stopped."""
        return self._current.servers.get(name) if self._current else None

    def _port(self, name: str) -> int | None:
        server = self._current.servers.get(name) if self._current else None
        return getattr(server, "port", None) if server is not None else None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the token manager and the enabled listeners; log what runs."""
        if self._store is None:  # opened off the loop: a slow or hostile store path cannot freeze it
            self._store = await open_store_async(self.config.token_store)
            self._owns_store = True
        self._current = await self._start_generation(self.config)
        try:
            await self._start_operations()
        except BaseException:
            await self.stop(0)
            raise

    async def _start_operations(self) -> None:
        """The admin listener and the alert monitor (once per process; not replaced by a reload)."""
        if self.config.admin is not None:
            from relay.admin.server import AdminServer  # noqa: PLC0415 - only when configured

            admin = AdminServer(self, self.config.admin)
            await admin.start()
            self._admin = admin
        if self.config.alerts is not None:
            from relay.alerts.monitor import AlertMonitor  # noqa: PLC0415 - only when configured

            monitor = AlertMonitor(self)
            monitor.start()
            self._alerts = monitor

    async def _start_generation(self, config: RelayConfig, *, bind_retries: int = 1) -> Generation:
        from relay.imap.server import ImapProxyServer  # noqa: PLC0415 - keeps `relay --help` fast
        from relay.localauth import LocalAuthenticator  # noqa: PLC0415
        from relay.pop3.server import Pop3ProxyServer  # noqa: PLC0415
        from relay.smtp.server import SmtpRelayServer  # noqa: PLC0415

        assert self._store is not None
        listeners = sum(int(getattr(config.listen, name).enabled) for name in ("smtp", "pop3", "imap"))
        config = dataclasses.replace(config, limits=fit_fd_limit(config.limits, listeners=listeners))
        if self._tokens_factory is not None:
            tokens = self._tokens_factory(config, self._store)
        else:
            tokens = TokenManager(config, self._store, lease_ttl_s=config.token_store.lease_ttl_s)
        if self.metrics is not None:
            self.metrics.add_accounts(config.accounts)
            tokens.observer = self.metrics
        gen = Generation(config, tokens)
        authenticator = (self._authenticator_factory(config) if self._authenticator_factory is not None
                         else LocalAuthenticator(config))
        try:
            gen.graph = graph_service(config, tokens)
            if config.listen.smtp.enabled:
                gen.servers["smtp"] = SmtpRelayServer(config, tokens, authenticator, observer=self.metrics,
                                                      deliveries=await self._deliveries(gen, tokens))
            if config.listen.pop3.enabled:
                mailboxes = None
                if gen.graph is not None:
                    from relay.graph.mailbox import graph_mailboxes  # noqa: PLC0415
                    from relay.pop3.upstream import open_upstream  # noqa: PLC0415

                    mailboxes = graph_mailboxes(gen.graph, open_upstream)
                gen.servers["pop3"] = Pop3ProxyServer(config, tokens, authenticator, mailboxes=mailboxes,
                                                     observer=self.metrics)
            if config.listen.imap.enabled:
                gen.servers["imap"] = ImapProxyServer(config, tokens, authenticator, observer=self.metrics)
            for name, server in gen.servers.items():
                await start_with_retries(server, bind_retries)
                log_listener(name, getattr(config.listen, name), server.port)  # type: ignore[attr-defined]
            await tokens.start()
        except BaseException:
            await self._stop_generation(gen, 0)
            raise
        if not gen.servers:
            log.warning("all listeners are disabled (listen.smtp, listen.pop3, listen.imap): "
                        "the relay accepts nothing")
        await log_accounts(config, tokens)
        return gen

    async def _deliveries(self, gen: Generation, tokens: TokenManager) -> DeliveryFactory:
        """What each account's SMTP transactions go to: live forwarding, wrapped by Graph for
        ``send_via: graph`` accounts, wrapped by the spool for ``delivery: spool`` accounts."""
        from relay.metrics import NULL_OBSERVER  # noqa: PLC0415 - keeps `relay --help` fast
        from relay.smtp.forward import LiveForwarding  # noqa: PLC0415

        config = gen.config
        live = LiveForwarding(config, tokens)
        if self.metrics is not None:
            live.observer = self.metrics
        factory: DeliveryFactory = live
        if gen.graph is not None:
            from relay.graph.send import GraphDeliveries  # noqa: PLC0415

            factory = GraphDeliveries(gen.graph, config.limits, factory,
                                      observer=self.metrics or NULL_OBSERVER)
        return await self._spool_deliveries(config, tokens, factory)

    async def _spool_deliveries(self, config: RelayConfig, tokens: TokenManager,
                                forward: DeliveryFactory) -> DeliveryFactory:
        """The spool's factory around ``forward`` when an account spools (the spool starts the first
        time), else ``forward`` itself."""
        from relay.spool.service import SpoolService, uses_spool  # noqa: PLC0415 - keeps `relay --help` fast

        if self.spool is None:
            if not uses_spool(config):
                return forward
            self.spool = SpoolService(config, load_key(config.token_store), tokens,
                                      clock=self._spool_clock)
            await self.spool.start()
            if self.metrics is not None:
                self.metrics.spool = self.spool.stats
        else:
            self.spool.reconfigure(config, tokens)
        return self.spool.deliveries(config, forward)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, give sessions ``grace_s`` (limits.shutdown_grace_s) to end, then close."""
        self._close_listeners()  # first: nothing below may leave them accepting while it awaits
        for part in (self._alerts, self._admin):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.stop()  # type: ignore[attr-defined]
        self._alerts = self._admin = None
        gen, self._current = self._current, None
        self._stopping = gen
        if grace_s is None:
            grace_s = (gen.config if gen else self.config).limits.shutdown_grace_s
        spool, self.spool = self.spool, None
        # The spool's worker stops starting deliveries (running ones end) while the listeners
        # drain; sessions still finishing may spool (kept for the next start) until the store closes.
        stopping_worker = asyncio.ensure_future(spool.worker.stop()) if spool is not None else None
        if gen is not None:
            await self._stop_generation(gen, grace_s)
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        if spool is not None and stopping_worker is not None:
            await stopping_worker
            spool.store.close()
        if self._owns_store and self._store is not None:
            await self._store.close()
            self._store = None

    async def _stop_generation(self, gen: Generation, grace_s: float) -> None:
        results = await asyncio.gather(*(s.stop(grace_s) for s in gen.servers.values()),  # type: ignore[attr-defined]
                                       return_exceptions=True)
        for name, result in zip(gen.servers, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("%s listener did not stop cleanly: %s", name, result)
        if gen.graph is not None:
            await gen.graph.close()
        await gen.tokens.close()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), stop gracefully; return 0."""
        await self.start()
        loop = asyncio.get_running_loop()
        installed = []
        for signum, handler in ((signal.SIGTERM, self._on_stop_signal), (signal.SIGINT, self._on_stop_signal),
                                (signal.SIGHUP, self._on_reload_signal)):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # non-main thread, Windows
                loop.add_signal_handler(signum, handler, signum)
                installed.append(signum)
        log.info("relay running (pid signals: TERM/INT stop gracefully, HUP reloads the configuration)")
        sdnotify.notify(sdnotify.ready(self._status_line()))
        watchdog = sdnotify.start_watchdog()
        releaser = asyncio.ensure_future(release_when_idle())  # memory back after bursts
        stopping: asyncio.Task[None] | None = None
        try:
            await self._stop_requested.wait()
            self._close_listeners()
            sdnotify.notify(sdnotify.stopping())
            grace_s = self.config.limits.shutdown_grace_s
            if self._current is not None:
                grace_s = self._current.config.limits.shutdown_grace_s
            log.info("stopping: no new connections; waiting up to %.0f s for open sessions", grace_s)
            stopping = asyncio.ensure_future(self.stop(grace_s))
            await stopping
        except asyncio.CancelledError:
            if stopping is not None:
                stopping.cancel()
            raise
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            if watchdog is not None:
                watchdog.cancel()
            releaser.cancel()
        log.info("stopped")
        return self.exit_code

    def _status_line(self) -> str:
        ports = ", ".join(f"{name} {getattr(server, 'port', '?')}"
                          for name, server in (self._current.servers.items() if self._current else ()))
        return f"serving {len(self.config.accounts)} account(s); listeners: {ports or 'none'}"

    def request_stop(self) -> None:
        """Ask `run` to stop gracefully (what SIGTERM does)."""
        self._stop_requested.set()

    def _close_listeners(self) -> None:
        """Refuse new connections at once on every listener; open sessions carry on."""
        for gen in (self._current, self._stopping):
            for server in (gen.servers.values() if gen else ()):
                server.close_listener()  # type: ignore[attr-defined]

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self._close_listeners()  # in the handler itself: no loop iteration accepts in between
            log.info("received %s", signal.Signals(signum).name)
            self.request_stop()
            return
        log.warning("received %s again: closing open sessions now", signal.Signals(signum).name)
        gen = self._current or self._stopping
        for server in (gen.servers.values() if gen else ()):
            task = asyncio.ensure_future(server.stop(0))  # type: ignore[attr-defined]
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay import sdnotify
from relay.config.model import ListenerConfig, RelayConfig, UpstreamEndpoint
from relay.errors import RelayError
from relay.listening import fit_fd_limit
from relay.memory_release import release_when_idle
from relay.metrics import RelayMetrics
from relay.tokens.interface import TokenStore
from relay.tokens.manager import AccountTokenStatus, TokenManager
from relay.tokens.store import load_key, open_store_async

if TYPE_CHECKING:
    from relay.admin.report import ListenerState
    from relay.localauth import LocalAuthenticator
    from relay.smtp.delivery import DeliveryFactory
    from relay.spool.service import SpoolService

log = logging.getLogger("relay.app")

ConfigLoader = Callable[[Path], RelayConfig]
TokensFactory = Callable[[RelayConfig, TokenStore], TokenManager]
"""Builds a generation's TokenManager (tests: retry timing, clocks); default: from the config."""
AuthenticatorFactory = Callable[[RelayConfig], "LocalAuthenticator"]
"""Builds a generation's local authenticator (tests: wrappers); default: from the config."""
BIND_RETRIES = 20
BIND_RETRY_DELAY_S = 0.05
RELOAD_TIMEOUT_S = 30.0  # reading + validating the YAML; it takes milliseconds normally


@dataclass
class _Generation:
    """One configuration's running parts; a reload replaces the whole generation."""

    config: RelayConfig
    tokens: TokenManager
    servers: dict[str, object] = field(default_factory=dict)  # "smtp"/"pop3"/"imap" -> server
    graph: Any = None  # relay.graph.client.GraphService when an account uses Graph


def _graph_service(config: RelayConfig, tokens: TokenManager) -> Any:
    """The shared Graph service when an account sends or reads through Graph, else None."""
    if not any("graph" in (a.send_via, a.read_via) for a in config.accounts.values()):
        return None
    from relay.graph.client import GraphService  # noqa: PLC0415 - only relays that use Graph

    return GraphService(tokens)


class RelayApp:
    """The running relay: ``await app.start()`` then ``await app.stop()``, or ``await app.run()``."""

    def __init__(self, config: RelayConfig, *, store: TokenStore | None = None,
                 loader: ConfigLoader | None = None, reload_timeout_s: float = RELOAD_TIMEOUT_S,
                 tokens_factory: TokensFactory | None = None,
                 authenticator_factory: AuthenticatorFactory | None = None) -> None:
        self.config = config
        self._tokens_factory = tokens_factory
        self._authenticator_factory = authenticator_factory
        self._store = store
        self._owns_store = False
        self._loader = loader
        self._reload_timeout_s = reload_timeout_s
        self.exit_code = 0  # 1 when the relay stopped because it could not listen any more
        self._current: _Generation | None = None
        self._stopping: _Generation | None = None
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

    async def _start_generation(self, config: RelayConfig, *, bind_retries: int = 1) -> _Generation:
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
        gen = _Generation(config, tokens)
        authenticator = (self._authenticator_factory(config) if self._authenticator_factory is not None
                         else LocalAuthenticator(config))
        try:
            gen.graph = _graph_service(config, tokens)
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
                await _start_with_retries(server, bind_retries)
                _log_listener(name, getattr(config.listen, name), server.port)  # type: ignore[attr-defined]
            await tokens.start()
        except BaseException:
            await self._stop_generation(gen, 0)
            raise
        if not gen.servers:
            log.warning("all listeners are disabled (listen.smtp, listen.pop3, listen.imap): "
                        "the relay accepts nothing")
        await _log_accounts(config, tokens)
        return gen

    async def _deliveries(self, gen: _Generation, tokens: TokenManager) -> DeliveryFactory:
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
            self.spool = SpoolService(config, load_key(config.token_store), tokens)
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

    async def _stop_generation(self, gen: _Generation, grace_s: float) -> None:
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

    # --- reload ---------------------------------------------------------------------------------

    def _on_reload_signal(self, signum: int) -> None:
        sdnotify.notify(sdnotify.reloading())
        task = asyncio.ensure_future(self._reload_and_notify())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
        task.add_done_callback(_log_reload_crash)

    async def _reload_and_notify(self) -> None:
        await self.reload()
        if self._current is not None:
            sdnotify.notify(sdnotify.ready(self._status_line()))

    async def reload(self) -> bool:
        """Re-read the configuration file; swap in new listeners when it is valid. True on success.

        Any failure keeps the relay listening with the running configuration and is logged at
        ERROR naming what to fix.
        """
        async with self._reload_lock:
            path = self.config.source_path
            if self._loader is None or path is None or self._current is None:
                log.warning("SIGHUP: this relay was not started from a configuration file; nothing to reload")
                return False
            new_config = await self._load_in_thread(path)
            if new_config is None:
                return False
            if self.spool is not None and new_config.spool_directory() != self.spool.directory:
                log.error("SIGHUP: spool.directory changed; restart the relay to move the spool "
                          "(keeping the running configuration)")
                return False
            if new_config.token_store != self.config.token_store:
                log.error("SIGHUP: token_store changed; restart the relay to use another store "
                          "(keeping the running configuration)")
                return False
            old = self._current
            if not await self._switch_to(new_config):
                return False
            if new_config.admin != self.config.admin or new_config.alerts != self.config.alerts:
                log.warning("SIGHUP: the admin and alerts sections changed; restart the relay to apply them")
            self.config = new_config
            log.info("SIGHUP: configuration reloaded from %s; %d session(s) finish on the old one",
                     path, sum(getattr(s, "active_sessions", 0) for s in old.servers.values()))
            return True

    async def _load_in_thread(self, path: Path) -> RelayConfig | None:
        """The new configuration, read off the event loop within the reload deadline; None on failure."""
        assert self._loader is not None
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._loader, path), self._reload_timeout_s)
        except TimeoutError:
            log.error("SIGHUP: reading %s took more than %.0f s (a file that never ends, a FIFO, a hung "
                      "network file system?); keeping the running configuration", path,
                      self._reload_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a reload must never take the running relay down
            log.error("SIGHUP: %s is invalid, keeping the running configuration:\n%s", path, exc)
        return None

    async def _switch_to(self, new_config: RelayConfig) -> bool:
        """Close the old listening sockets, start the new generation; on failure restore the old."""
        old = self._current
        assert old is not None
        # Close the old listening sockets (sessions continue) so the new ones can bind the ports.
        drain = asyncio.ensure_future(self._stop_generation(old, old.config.limits.shutdown_grace_s))
        self._draining.add(drain)
        drain.add_done_callback(self._draining.discard)
        await asyncio.sleep(0)
        try:
            self._current = await self._start_generation(new_config, bind_retries=BIND_RETRIES)
            return True
        except Exception as exc:  # noqa: BLE001 - whatever broke, the old listeners come back
            log.error("SIGHUP: cannot start with the new configuration (%s: %s); restoring the "
                      "running configuration's listeners", type(exc).__name__, exc)
        try:
            self._current = await self._start_generation(old.config, bind_retries=BIND_RETRIES)
        except Exception as exc:  # noqa: BLE001
            log.critical("SIGHUP: the previous listeners cannot be restored either (%s: %s); the relay "
                         "has no listeners and stops now (exit 1) so its supervisor restarts it",
                         type(exc).__name__, exc)
            self._current = None
            self.exit_code = 1
            self._stop_requested.set()
            return False
        log.error("SIGHUP: the relay keeps running with the previous configuration; fix %s and send "
                  "SIGHUP again", new_config.source_path or "the configuration")
        return False


def _log_reload_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("SIGHUP: reload failed unexpectedly", exc_info=task.exception())


async def _start_with_retries(server: object, attempts: int) -> None:
    """Start a listener, retrying a port still held by the listener it replaces."""
    for attempt in range(attempts):
        try:
            await server.start()  # type: ignore[attr-defined]
            return
        except OSError:
            if attempt + 1 >= attempts:
                raise
            await asyncio.sleep(BIND_RETRY_DELAY_S)


def _log_listener(name: str, listener: ListenerConfig, port: int) -> None:
    # Mirrors LocalAuthenticator.plaintext_auth_allowed: TLS, a loopback-bound listener, or a listed network.
    from relay.localauth import is_loopback  # noqa: PLC0415 - keeps `relay --help` fast

    nets = ", ".join(str(n) for n in listener.allow_plaintext_auth_from)
    if is_loopback(listener.host):
        plain = "any client (bound to loopback)"
    else:
        plain = f"clients in {nets}" if nets else "nobody (set allow_plaintext_auth_from or use TLS)"
    log.info("listener %s on %s:%d (tls: %s; AUTH without TLS allowed for %s)",
             name, listener.host, port, listener.tls, plain)


def _endpoint(endpoint: UpstreamEndpoint | None) -> str:
    if endpoint is None:
        return "off"
    return f"{endpoint.host}:{endpoint.port} ({endpoint.tls})"


def describe_token(status: AccountTokenStatus | None) -> str:
    """A short token-state phrase for logs and tables (never a token)."""
    if status is None:
        return "unknown"
    if status.state == "valid" and status.valid_until is not None:
        return f"valid until {status.valid_until.isoformat(timespec='seconds')}"
    if status.state in ("not authorized", "needs authorize"):
        return f"{status.state}: run `relay authorize {status.account}`"
    return status.state


async def _log_accounts(config: RelayConfig, tokens: TokenManager) -> None:
    try:
        statuses = {s.account: s for s in await tokens.status()}
    except RelayError as exc:
        log.error("cannot read the token status: %s", exc)
        statuses = {}
    for account in config.accounts.values():
        status = statuses.get(account.name)
        level = logging.WARNING if status and status.state in ("not authorized", "needs authorize") \
            else logging.INFO
        log.log(level, "account %s: login %s -> %s via %s; smtp %s; pop3 %s; imap %s; token %s",
                account.name, account.username, account.mailbox, account.credentials,
                _endpoint(account.smtp), _endpoint(account.pop3), _endpoint(account.imap),
                describe_token(status))
    # verify_tls: false is warned about by each listener for its own endpoints, once, at start.

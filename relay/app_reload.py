"""SIGHUP: re-read the configuration file and swap in a new generation (RelayApp's reload).

The file is read in a worker thread within ``reload_timeout_s``; when it is valid, new listeners
(and a new token manager over the same store) take over while running sessions finish on the old
ones; when anything fails, the running configuration keeps serving (its listeners restored). A
mixin of `relay.app.RelayApp`, typed against the `ReloadHost` protocol (no import of relay.app).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from relay import sdnotify
from relay.app_wiring import Generation
from relay.config.model import RelayConfig

if TYPE_CHECKING:
    from relay.spool.service import SpoolService

log = logging.getLogger("relay.app")

ConfigLoader = Callable[[Path], RelayConfig]
BIND_RETRIES = 20


class ReloadHost(Protocol):
    """What the reload uses of its RelayApp."""

    config: RelayConfig
    spool: SpoolService | None
    exit_code: int
    _loader: ConfigLoader | None
    _reload_timeout_s: float
    _reload_lock: asyncio.Lock
    _current: Generation | None
    _draining: set[asyncio.Future[Any]]
    _stop_requested: asyncio.Event

    def _status_line(self) -> str: ...

    async def _start_generation(self, config: RelayConfig, *, bind_retries: int = 1) -> Generation: ...

    async def _stop_generation(self, gen: Generation, grace_s: float) -> None: ...

    async def reload(self) -> bool: ...

    async def _reload_and_notify(self) -> None: ...

    async def _load_in_thread(self, path: Path) -> RelayConfig | None: ...

    async def _switch_to(self, new_config: RelayConfig) -> bool: ...


class ConfigReload:
    """Mixin: SIGHUP handling and `reload` for RelayApp."""

    _current: Generation | None  # RelayApp's running generation (set by the reload)

    def _on_reload_signal(self: ReloadHost, signum: int) -> None:
        sdnotify.notify(sdnotify.reloading())
        task = asyncio.ensure_future(self._reload_and_notify())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
        task.add_done_callback(_log_reload_crash)

    async def _reload_and_notify(self: ReloadHost) -> None:
        await self.reload()
        if self._current is not None:
            sdnotify.notify(sdnotify.ready(self._status_line()))

    async def reload(self: ReloadHost) -> bool:
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

    async def _load_in_thread(self: ReloadHost, path: Path) -> RelayConfig | None:
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

    async def _switch_to(self: ReloadHost, new_config: RelayConfig) -> bool:
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

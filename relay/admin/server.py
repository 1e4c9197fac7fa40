"""The admin HTTP listener: GET /metrics, /healthz, /readyz, /status (relay.httpserver on h11).

Off unless ``admin:`` is configured; binds 127.0.0.1:9025 by default. With ``admin.auth_token``
every path except /healthz needs ``Authorization: Bearer <token>`` (compared in constant time).
Responses never contain a token or secret; they are `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging

from relay.admin.report import RelayView, collect, readiness, status_document, update_state_gauges
from relay.admin.webapp import AdminWeb
from relay.admin.websession import bearer_ok
from relay.config.model import AdminConfig
from relay.httpserver import HttpLimits, HttpRequest, HttpResponse, HttpServer, json_response, text_response
from relay.localauth import is_loopback

log = logging.getLogger("relay.admin")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
READ_METHODS = ("GET", "HEAD")
PUBLIC_PATHS = frozenset({"/healthz"})
ADMIN_LIMITS = HttpLimits(max_head_bytes=8 * 1024, max_body_bytes=64 * 1024, idle_timeout_s=10.0,
                          max_connections=32)


class AdminServer:
    """Serves the admin endpoints for a running relay (``.port`` is the bound port)."""

    def __init__(self, view: RelayView, config: AdminConfig) -> None:
        self.view = view
        self.config = config
        self._token = config.auth_token.reveal() if config.auth_token else None
        self._http = HttpServer(self.handle, config.host, config.port, limits=ADMIN_LIMITS, name="admin")
        self._routes = {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
                        "/status": self._status}
        self.web = AdminWeb(view, config, open_without_token=self._token is None and is_loopback(config.host))

    @property
    def port(self) -> int:
        """The bound port."""
        return self._http.port

    async def start(self) -> None:
        """Bind and serve; log where."""
        await self._http.start()
        log.info("admin listener on http://%s:%d (/metrics /healthz /readyz /status; bearer token %s)",
                 self.config.host, self.port, "required" if self._token else "not configured")

    async def stop(self) -> None:
        """Stop serving; end device-code sign-ins still polling."""
        await self._http.stop()
        for sign_in in self.web.actions.devices.values():
            if sign_in.task is not None:
                sign_in.task.cancel()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Route one request: the page (its own login), else auth, method, path."""
        if self.web.owns(request.path):
            bearer = self._token is None or bearer_ok(request.headers.get("authorization"), self._token)
            return await self.web.handle(request, bearer)
        route = self._routes.get(request.path)
        if self._token and request.path not in PUBLIC_PATHS and \
                not bearer_ok(request.headers.get("authorization"), self._token):
            log.info("admin: refused %s %s from %s: %s bearer token", request.method, request.path,
                     request.client, "wrong" if request.headers.get("authorization") else "no")
            return json_response(401, {"error": "missing or wrong bearer token (admin.auth_token)"},
                                 (("WWW-Authenticate", 'Bearer realm="xoauth2-relay"'),))
        if route is None:
            return json_response(404, {"error": f"no such path; try / or {', '.join(self._routes)}"})
        if request.method not in READ_METHODS:
            return json_response(405, {"error": f"{request.method} is not allowed here; use GET"},
                                 (("Allow", "GET, HEAD"),))
        return await route()

    async def _metrics(self) -> HttpResponse:
        metrics = self.view.metrics
        if metrics is None:  # pragma: no cover - the app always creates metrics with an admin listener
            return json_response(503, {"error": "metrics are not collected"})
        update_state_gauges(metrics, await collect(self.view), self.view.pool_sessions())
        return HttpResponse(200, metrics.render(), PROMETHEUS_TEXT)

    async def _healthz(self) -> HttpResponse:
        return text_response(200, "ok\n")

    async def _readyz(self) -> HttpResponse:
        reasons = readiness(await collect(self.view))
        if reasons:
            return json_response(503, {"ready": False, "reasons": reasons})
        return json_response(200, {"ready": True, "reasons": []})

    async def _status(self) -> HttpResponse:
        return json_response(200, status_document(await collect(self.view)))

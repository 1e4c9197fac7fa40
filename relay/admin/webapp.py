"""The admin page's routes: /, /login, /logout, /admin.css, /callback, /accounts/NAME/ACTION.

Access: a session cookie from /login (the admin token), or ``Authorization: Bearer`` for scripts;
a loopback listener without a token needs neither. Every POST needs the session's CSRF token (a
bearer request has no session and needs none: it cannot come from a browser form). /callback is
authorized by its single-use ``state`` alone: the provider's redirect is a cross-site navigation
that does not carry a SameSite=Strict cookie.
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import unquote

from relay.admin.actions import ActionError, AdminActions
from relay.admin.report import RelayView, collect, status_document
from relay.admin.web import CSS, SECURITY_HEADERS, login_page, message_page, status_page
from relay.admin.websession import WebSession, WebSessions, bearer_ok, csrf_ok, session_cookie
from relay.config.model import AdminConfig
from relay.errors import OAuthError, RelayError
from relay.httpserver import HttpRequest, HttpResponse

log = logging.getLogger("relay.admin")

ACTION_PATH = re.compile(r"/accounts/([^/]{1,200})/(authorize|test|revoke)")
HOST_HEADER = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")
MAX_FIELD_CHARS = 512


def html(status: int, page: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """An HTML response with the security headers."""
    return HttpResponse(status, page.encode("utf-8"), "text/html; charset=utf-8", SECURITY_HEADERS + headers)


def see_other(location: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """A 303 redirect."""
    return HttpResponse(303, b"", "text/plain", (("Location", location), *SECURITY_HEADERS, *headers))


class AdminWeb:
    """Serves the admin page for a running relay."""

    PATHS = ("/", "/login", "/logout", "/admin.css", "/callback")

    def __init__(self, view: RelayView, config: AdminConfig, *, open_without_token: bool) -> None:
        self.view = view
        self.config = config
        self.open_without_token = open_without_token
        self.sessions = WebSessions()
        self.actions = AdminActions(view)

    def owns(self, path: str) -> bool:
        """True for the page's paths."""
        return path in self.PATHS or path.startswith("/accounts/")

    async def handle(self, request: HttpRequest, bearer: bool) -> HttpResponse:
        """Route a request for one of the page's paths."""
        path, method = request.path, request.method
        if path == "/admin.css":
            return HttpResponse(200, CSS.encode(), "text/css; charset=utf-8")
        if path == "/callback":
            return await self._callback(request)
        if path == "/login":
            return await self._login(request)
        session = self.sessions.get(request.headers.get("cookie"))
        if session is None and not bearer and not self.open_without_token:
            if method == "GET" and path == "/":
                return see_other("/login")
            return html(401, message_page("Not logged in", "log in on /login first", ok=False))
        if method == "GET" and path == "/":
            return await self._page(session)
        if method != "POST":
            return html(405, message_page("Not allowed", f"{method} is not allowed here", ok=False),
                        (("Allow", "POST"),))
        if session is not None and not csrf_ok(session, request.form.get("csrf")):
            return html(403, message_page("Refused", "missing or wrong CSRF token; reload the page",
                                          ok=False))
        if session is None and not bearer:  # open loopback page without a session: make one first
            return html(403, message_page("Refused", "reload the page, then use its buttons", ok=False))
        if path == "/logout":
            if session is not None:
                self.sessions.end(session)
            return see_other("/login", (("Set-Cookie", session_cookie(None)),))
        match = ACTION_PATH.fullmatch(path)
        if match is None:
            return html(404, message_page("Not found", "no such page", ok=False))
        return await self._action(request, session, unquote(match[1]), match[2])

    async def _page(self, session: WebSession | None) -> HttpResponse:
        headers: tuple[tuple[str, str], ...] = ()
        if session is None:  # an open loopback page: a session for the CSRF token
            session = self.sessions.create()
            headers = (("Set-Cookie", session_cookie(session)),)
        flash, session.flash = session.flash, []
        doc = status_document(await collect(self.view))
        return html(200, status_page(doc, session.csrf, flash, self.actions.devices), headers)

    async def _login(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET":
            return html(200, login_page())
        if request.method != "POST":
            return html(405, login_page("use the form"), (("Allow", "GET, POST"),))
        token = self.config.auth_token
        given = request.form.get("token", "")[:MAX_FIELD_CHARS]
        if token is None or bearer_ok(f"Bearer {given}", token.reveal()):
            client_ip = request.client.rpartition(":")[0]
            self.sessions.succeeded(client_ip)
            session = self.sessions.create()
            return see_other("/", (("Set-Cookie", session_cookie(session)),))
        client_ip = request.client.rpartition(":")[0]
        delay_s = self.sessions.failure_delay_s(client_ip, self.view.config.limits.auth_failure_delay_s)
        log.info("admin page: failed login from %s", request.client)
        await asyncio.sleep(delay_s)
        return html(401, login_page("wrong token"))

    def _base_url(self, request: HttpRequest) -> str:
        host = request.headers.get("host", "")
        if not HOST_HEADER.fullmatch(host):
            host = f"{self.config.host}:{self.config.port}"
        return f"http://{host}"

    async def _action(self, request: HttpRequest, session: WebSession | None, name: str,
                      action: str) -> HttpResponse:
        if name not in self.view.config.accounts:
            return html(404, message_page("Not found", "no such account", ok=False))
        try:
            if action == "authorize":
                url = await self.actions.start_authorize(name, self._base_url(request))
                if url is not None:
                    return see_other(url)
                message = f"Device sign-in for {name} started: the code is shown below"
            elif action == "test":
                to = request.form.get("to", "")
                if not to or len(to) > 254 or not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", to):
                    raise ActionError("give one email address to send the test message to")
                message = await self.actions.send_test(name, to)
            else:
                message = await self.actions.revoke(name)
        except (ActionError, OAuthError, RelayError) as exc:
            message = f"{action} {name}: {exc}"
        if session is None:
            return html(200, message_page(action, message, ok=True))
        session.flash.append(message)
        return see_other("/")

    async def _callback(self, request: HttpRequest) -> HttpResponse:
        if request.method != "GET":
            return html(405, message_page("Not allowed", "use GET", ok=False), (("Allow", "GET"),))
        params = {k: v[:MAX_FIELD_CHARS] for k, v in request.query.items()}
        try:
            message, ok = await self.actions.finish_authorize(params), True
        except (ActionError, OAuthError, RelayError) as exc:
            message, ok = str(exc), False
        session = self.sessions.get(request.headers.get("cookie"))
        if session is not None and ok:
            session.flash.append(message)
            return see_other("/")
        return html(200 if ok else 400, message_page("Sign-in", message, ok))

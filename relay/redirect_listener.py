"""The loopback listener of `relay authorize` for the authorization redirect (RFC 8252).

It binds 127.0.0.1 (and [::1] on the same port for a ``localhost`` redirect), answers only
``GET`` on the redirect path, and takes the first request carrying this run's ``state``: with an
``error`` it ends the flow (denied, provider error), with a ``code`` it hands the code over.
Anything else gets an HTML answer (400 without the right state, 404, 405, 410) and the listener
keeps waiting, so an old tab or a cross-site request cannot abort the sign-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import html
import secrets
from urllib.parse import parse_qsl, urlsplit

from relay.errors import AuthorizeDenied, AuthorizeFlowError, AuthorizeStateMismatch, AuthorizeTimeout

REDIRECT_PATH = "/"
LISTEN_HOST = "127.0.0.1"
BIND_ATTEMPTS = 5


def state_matches(params: dict[str, str], expected_state: str) -> bool:
    """True when the redirect's ``state`` is this run's (constant-time compare)."""
    return secrets.compare_digest(params.get("state", "").encode(), expected_state.encode())


def code_from_redirect(params: dict[str, str], expected_state: str) -> str:
    """Return the code of a redirect's query parameters, or raise the matching flow error.

    The state is checked first: an ``error`` without this run's state (a stale tab, a cross-site
    request) says nothing about this sign-in."""
    if not state_matches(params, expected_state):
        raise AuthorizeStateMismatch("the redirect's state does not match this authorize run (a stale "
                                     "or forged redirect); nothing was stored — start again")
    error = params.get("error")
    if error:
        detail = params.get("error_description", "")
        detail = f": {detail[:300]}" if detail else ""
        if error == "access_denied":
            raise AuthorizeDenied(f"the sign-in was declined (access_denied{detail}); nothing was stored",
                                  provider_error=error)
        raise AuthorizeFlowError(f"the provider returned an error ({error}{detail}); nothing was stored",
                                 provider_error=error)
    code = params.get("code")
    if not code:
        raise AuthorizeFlowError("the redirect carries neither a code nor an error; nothing was stored")
    return code


def default_redirect_host(provider: str) -> str:
    """The redirect host when credentials.NAME.redirect_host is not set.

    RFC 8252 section 8.3: the loopback IP literal, not ``localhost`` (which a browser may resolve
    to ::1 first, where nothing or another user's program listens). Microsoft's app registrations
    accept ``http://127.0.0.1`` only through the manifest, so for them it stays ``localhost`` (the
    listener then holds the port on ::1 as well)."""
    return "localhost" if provider == "microsoft" else LISTEN_HOST


class RedirectListener:
    """A single-use loopback HTTP listener for the authorization redirect.

    Requests without this run's ``state`` (a bookmark, ``GET /``, a cross-site image carrying
    ``?error=access_denied``) are answered 400 and ignored: the listener keeps waiting."""

    def __init__(self, expected_state: str, *, port: int = 0, redirect_host: str = LISTEN_HOST,
                 path: str = REDIRECT_PATH) -> None:
        self.expected_state = expected_state
        self.path = path
        self.redirect_host = redirect_host
        self._requested_port = port
        self.port = 0
        self.ignored_requests = 0
        self._servers: list[asyncio.Server] = []
        self._result: asyncio.Future[str] | None = None

    @property
    def redirect_uri(self) -> str:
        """The redirect URI to register and send (``http://127.0.0.1:PORT/``)."""
        return f"http://{self.redirect_host}:{self.port}{self.path}"

    async def start(self) -> None:
        """Bind 127.0.0.1 (port from the credentials, 0 = any free port), and [::1] on the same
        port when the redirect host is ``localhost``."""
        self._result = asyncio.get_running_loop().create_future()
        for _ in range(BIND_ATTEMPTS):
            server = await self._bind(LISTEN_HOST, self._requested_port)
            self.port = server.sockets[0].getsockname()[1]
            self._servers = [server]
            if self.redirect_host != "localhost" or await self._bind_ipv6_too():
                return
        raise AuthorizeFlowError("cannot find a port free on both 127.0.0.1 and [::1] for the redirect; "
                                 "set credentials.NAME.redirect_host: 127.0.0.1 if the provider accepts it")

    async def _bind(self, host: str, port: int) -> asyncio.Server:
        try:
            return await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            raise AuthorizeFlowError(
                f"cannot listen on {host}:{port} for the redirect: {exc.strerror}; "
                "change credentials.NAME.redirect_port (0 = any free port)") from None

    async def _bind_ipv6_too(self) -> bool:
        """Hold [::1]:port too (a browser may resolve localhost there); False: try another port."""
        try:
            self._servers.append(await asyncio.start_server(self._handle, "::1", self.port))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return True  # no IPv6 loopback on this host: localhost can only be 127.0.0.1
            await self.close()
            if self._requested_port:
                raise AuthorizeFlowError(
                    f"[::1]:{self.port} is in use by another program, which a browser resolving "
                    "localhost to ::1 would reach; choose another credentials.NAME.redirect_port or "
                    "set redirect_host: 127.0.0.1") from None
            return False
        return True

    async def wait_for_code(self, timeout_s: float) -> str:
        """Return the code once the redirect arrived; raise the flow error it carried or on timeout."""
        assert self._result is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._result), timeout_s)
        except TimeoutError:
            if self.ignored_requests:
                raise AuthorizeStateMismatch(
                    f"no redirect for this authorize run arrived within {timeout_s:.0f} s; "
                    f"{self.ignored_requests} request(s) with a missing or wrong state (a stale or "
                    "forged redirect) were ignored; nothing was stored — start again") from None
            raise AuthorizeTimeout(f"no sign-in completed within {timeout_s:.0f} s; nothing was stored "
                                   "(use --timeout for more time)") from None
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or parts[0] != "GET":
                await self._respond(writer, 405, "Only GET is accepted here.")
                return
            target = urlsplit(parts[1])
            if target.path != self.path:
                await self._respond(writer, 404, "Not found.")
                return
            await self._redirect(writer, dict(parse_qsl(target.query)))
        except ConnectionError:
            return
        finally:
            writer.close()

    async def _redirect(self, writer: asyncio.StreamWriter, params: dict[str, str]) -> None:
        assert self._result is not None
        if not state_matches(params, self.expected_state):
            self.ignored_requests += 1
            await self._respond(writer, 400, "This request does not carry the state of the running "
                                "sign-in (a stale tab or another page), so it was ignored; the relay "
                                "is still waiting for the sign-in to finish.")
            return
        if self._result.done():
            await self._respond(writer, 410, "This sign-in link was already used.")
            return
        try:
            code = code_from_redirect(params, self.expected_state)
        except AuthorizeFlowError as exc:
            self._result.set_exception(exc)
            await self._respond(writer, 400, f"Sign-in failed: {exc}")
            return
        self._result.set_result(code)
        await self._respond(writer, 200, "Authorization complete. You can close this window and "
                            "return to the terminal.")

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, text: str) -> None:
        body = (f"<!doctype html><meta charset=utf-8><title>xoauth2-relay</title>"
                f"<p>{html.escape(text)}</p>").encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  410: "Gone"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
                     f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
                     .encode("latin-1") + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

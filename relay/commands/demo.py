"""`relay demo`: the whole path end to end against the built-in sandbox, no account or internet needed.

Starts the sandbox (a local OAuth provider and upstream SMTP/POP3 servers), writes a throwaway
configuration with a demo account, authorizes it (the sandbox approves by itself), starts the
relay, sends one message through the relay's SMTP and fetches it back over its POP3, then keeps
serving so you can try it by hand (``--once`` exits after the round trip). With ``--graph`` the
demo account sends and reads through the sandbox's fake Microsoft Graph instead (``send_via:
graph``, ``read_via: graph``): the same plain logins, sendMail and the Inbox on the far side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from relay import eventloop
from relay.errors import RelayError
from relay.logging_setup import add_logging_arguments, configure_logging, register_secret

if TYPE_CHECKING:
    from relay.app import RelayApp
    from relay.config.model import RelayConfig
    from relay.sandbox.world import SandboxWorld
    from relay.tokens.model import TokenSet

CHECK = "\u2713"
DEMO_ACCOUNT = "demo"
DEMO_LOGIN = "demo-app"
DEMO_MAILBOX = "demo@sandbox.test"
DEFAULT_SMTP_PORT = 2525
DEFAULT_POP3_PORT = 1110
DEFAULT_IMAP_PORT = 1143
CLIENT_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `relay demo` to the CLI."""
    p = subparsers.add_parser("demo", help="see mail go through end to end against a built-in sandbox",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--once", action="store_true", help="exit after the round trip instead of serving")
    p.add_argument("--smtp-port", type=int, default=None, metavar="N",
                   help=f"relay SMTP port ({DEFAULT_SMTP_PORT}, or any free port when taken; 0: any)")
    p.add_argument("--pop3-port", type=int, default=None, metavar="N",
                   help=f"relay POP3 port ({DEFAULT_POP3_PORT}, or any free port when taken; 0: any)")
    p.add_argument("--imap-port", type=int, default=None, metavar="N",
                   help=f"relay IMAP port ({DEFAULT_IMAP_PORT}, or any free port when taken; 0: any)")
    p.add_argument("--graph", action="store_true",
                   help="send and read through (a fake) Microsoft Graph instead of SMTP/POP3 upstream")
    add_logging_arguments(p)
    p.set_defaults(func=cmd_demo, log_level="WARNING")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the round trip worked (and, without --once, after Ctrl-C)."""
    configure_logging(args.log_level, args.log_format)
    return eventloop.run(Demo(args).run(), eventloop.resolve(None))  # the loop `relay serve` uses


def say(text: str) -> None:
    """Print one step of the demo."""
    print(text, flush=True)


def _port_or_free(wanted: int | None, default: int) -> int:
    """``wanted`` if given; else ``default`` when it is free on 127.0.0.1, else 0 (any free port)."""
    if wanted is not None:
        return wanted
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", default))
        except OSError:
            return 0
    return default


class MailDelivery:
    """Moves each message the sandbox SMTP server accepts into its recipients' sandbox POP3 maildrops.

    A real provider does this between its submission and its mailbox servers; the sandbox keeps them
    apart, so the demo joins them here.
    """

    def __init__(self, world: SandboxWorld, *, graph: bool = False) -> None:
        self._world = world
        self._graph = graph
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-delivery", daemon=True)

    def start(self) -> None:
        """Start moving messages in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        if self._graph:
            self._run_graph()
            return
        smtp, pop3 = self._world.smtp, self._world.pop3
        delivered = 0
        while not self._stop.is_set():
            messages = smtp.wait_for_messages(delivered + 1, timeout_s=0.2)
            for message in messages[delivered:]:
                for rcpt in message.rcpt_tos:
                    pop3.deliver(rcpt, message.data)
            delivered = len(messages)


    def _run_graph(self) -> None:
        """Graph: each accepted sendMail lands in the Inbox of its sandbox recipients."""
        from relay.graph.envelope import header_recipients  # noqa: PLC0415

        graph = self._world.graph
        delivered = 0
        while not self._stop.wait(0.05):
            sent = graph.sent()
            for mime in sent[delivered:]:
                for rcpt in header_recipients(mime):
                    if graph.mailboxes.has(rcpt):
                        graph.mailboxes.deliver(rcpt, mime)
            delivered = len(sent)


class Demo:
    """One demo run: sandbox, configuration, authorize, relay, round trip, serve."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.password = secrets.token_urlsafe(12)
        register_secret(self.password)  # printed once for trying by hand, never logged
        self.dir = Path(tempfile.mkdtemp(prefix="relay-demo-"))
        self.config_path = self.dir / "relay.yaml"

    async def run(self) -> int:
        """Run every step; always stop what was started and remove the temporary directory."""
        from relay.sandbox.world import SandboxWorld  # noqa: PLC0415 - keeps `relay --help` fast

        world = SandboxWorld.start(self.dir / "sandbox")
        graph = bool(getattr(self.args, "graph", False))
        delivery = MailDelivery(world, graph=graph)
        delivery.start()
        app: RelayApp | None = None
        try:
            say(f"{CHECK} Sandbox started: OAuth provider {world.oauth.url}, upstream SMTP "
                f"{world.host}:{world.smtp_port} (STARTTLS), upstream POP3 {world.host}:{world.pop3_port} "
                f"and IMAP {world.host}:{world.imap_port} (TLS), fake Microsoft Graph {world.graph.url}, "
                "mailbox " + DEMO_MAILBOX)
            config = self.write_config(world)
            say(f"{CHECK} Demo configuration written to {self.config_path} (account '{DEMO_ACCOUNT}', "
                f"local login {DEMO_LOGIN}, encrypted token store with a fresh key)")
            tokens = await self.authorize(config)
            say(f"{CHECK} Authorized account '{DEMO_ACCOUNT}' with the sandbox (authorization code + PKCE, "
                f"approved automatically); access token valid until {tokens.expires_at:%H:%M:%S} UTC, "
                "refresh token stored encrypted")
            app = await self.start_relay(config)
            smtp_port, pop3_port, imap_port = app.smtp_port, app.pop3_port, app.imap_port
            assert smtp_port is not None and pop3_port is not None and imap_port is not None
            say(f"{CHECK} Relay listening: SMTP 127.0.0.1:{smtp_port}, POP3 127.0.0.1:{pop3_port}, "
                f"IMAP 127.0.0.1:{imap_port}")
            subject, msgid = await self.send_step(world, smtp_port, graph=graph)
            fetched = await asyncio.to_thread(self.fetch, pop3_port, msgid)
            upstream = "the Inbox read through Graph" if graph else "XOAUTH2 upstream"
            say(f"{CHECK} Fetched it back over the relay's POP3 (USER/PASS as {DEMO_LOGIN}, {upstream}): "
                f"message {fetched} of the mailbox, Subject: {subject}")
            if not graph:  # IMAP has no Graph path: the IMAP listener serves XOAUTH2 accounts only
                number = await asyncio.to_thread(self.fetch_imap, imap_port, msgid)
                say(f"{CHECK} Fetched it again over the relay's IMAP (LOGIN as {DEMO_LOGIN}, AUTHENTICATE "
                    f"XOAUTH2 upstream): message {number} of INBOX")
            out = "Microsoft Graph" if graph else "OAuth 2.0 (XOAUTH2)"
            say(f"\nRound trip OK: plain logins in, {out} out.\n")
            say(self.by_hand(smtp_port, pop3_port, imap_port))
            if not self.args.once:
                await self.serve_until_signal()
            return 0
        except DemoFailed as exc:
            print(f"\u2717 {exc}", file=sys.stderr)
            return 1
        finally:
            if app is not None:
                await app.stop(grace_s=5)
            delivery.stop()
            world.stop()
            shutil.rmtree(self.dir, ignore_errors=True)

    async def send_step(self, world: SandboxWorld, smtp_port: int, *, graph: bool) -> tuple[str, str]:
        """Send the demo message through the relay's SMTP; check where it arrived (sandbox SMTP
        upstream, or the fake Graph); return its subject and Message-ID."""
        subject, msgid = await asyncio.to_thread(self.send, smtp_port)
        if graph:
            if not world.graph.sent():
                raise DemoFailed("the fake Microsoft Graph did not receive the message")
            say(f"{CHECK} Sent a message through the relay's SMTP (AUTH PLAIN as {DEMO_LOGIN}): 250 "
                f"after Microsoft Graph answered 202 to POST /users/{DEMO_MAILBOX}/sendMail (the "
                "MIME message base64, with a graph.microsoft.com token from the same grant)")
        else:
            received = world.smtp.wait_for_messages(1, timeout_s=10)
            if not received:
                raise DemoFailed("the sandbox upstream did not receive the message")
            say(f"{CHECK} Sent a message through the relay's SMTP (AUTH PLAIN as {DEMO_LOGIN}): 250; "
                f"the relay logged in upstream with XOAUTH2 as {received[-1].user} and the sandbox "
                "accepted it")
        return subject, msgid

    def write_config(self, world: SandboxWorld) -> RelayConfig:
        """Write the store key and the YAML configuration; load it back through the real loader."""
        from relay.commands._ops import load_config_file  # noqa: PLC0415
        from relay.passwords import hash_password  # noqa: PLC0415
        from relay.tokens.store import write_key_file  # noqa: PLC0415

        key_file = self.dir / "store.key"
        write_key_file(key_file)
        creds = world.credentials_yaml("sandbox")
        creds["sandbox"]["redirect_host"] = "127.0.0.1"  # the sign-in "browser" below resolves no names
        data = {
            "listen": {
                "smtp": {"enabled": True, "host": "127.0.0.1", "tls": "none",
                         "port": _port_or_free(self.args.smtp_port, DEFAULT_SMTP_PORT)},
                "pop3": {"enabled": True, "host": "127.0.0.1", "tls": "none",
                         "port": _port_or_free(self.args.pop3_port, DEFAULT_POP3_PORT)},
                "imap": {"enabled": True, "host": "127.0.0.1", "tls": "none",
                         "port": _port_or_free(self.args.imap_port, DEFAULT_IMAP_PORT)},
            },
            "token_store": {"path": str(self.dir / "tokens.enc"), "key_env": None, "key_file": str(key_file)},
            "credentials": creds,
            "accounts": {DEMO_ACCOUNT: (world.graph_account_yaml if getattr(self.args, "graph", False)
                                        else world.account_yaml)(
                DEMO_LOGIN, hash_password(self.password), DEMO_MAILBOX, credentials="sandbox")},
            "limits": {"auth_failure_delay_s": 0.2, "shutdown_grace_s": 5},
        }
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# Written by `relay demo`; removed when the demo ends.\n")
            yaml.safe_dump(data, fh, sort_keys=False)
        return load_config_file(self.config_path)

    async def authorize(self, config: RelayConfig) -> TokenSet:
        """Run the real authorize flow; the "browser" is a thread that follows the sandbox's redirect."""
        import httpx  # noqa: PLC0415

        from relay.authorize import Authorizer  # noqa: PLC0415
        from relay.tokens.store import open_store  # noqa: PLC0415

        def browse(url: str) -> None:
            def follow() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(url, follow_redirects=True, timeout=10)
            threading.Thread(target=follow, name="demo-browser", daemon=True).start()

        store = open_store(config.token_store)
        authorizer = Authorizer(config, store, out=io.StringIO(), open_url=browse)
        try:
            return await authorizer.run(DEMO_ACCOUNT, timeout_s=30)
        except (RelayError, OSError) as exc:
            raise DemoFailed(f"authorizing the demo account failed: {exc}") from exc

    async def start_relay(self, config: RelayConfig) -> RelayApp:
        """Start the relay (both listeners) on this event loop."""
        from relay.app import RelayApp  # noqa: PLC0415

        app = RelayApp(config)
        try:
            await app.start()
        except OSError as exc:
            raise DemoFailed(f"the relay cannot listen: {exc} "
                             "(try --smtp-port 0 --pop3-port 0 --imap-port 0)") from exc
        return app

    def send(self, port: int) -> tuple[str, str]:
        """Send the test message through the relay with smtplib; return (subject, Message-ID)."""
        # Mail clients are imported here: every command module is imported by `relay serve` too.
        import smtplib  # noqa: PLC0415
        from email.message import EmailMessage  # noqa: PLC0415
        from email.utils import make_msgid  # noqa: PLC0415

        msg = EmailMessage()
        msg["From"] = DEMO_MAILBOX
        msg["To"] = DEMO_MAILBOX
        msg["Subject"] = subject = "Hello from relay demo"
        msg["Message-ID"] = msgid = make_msgid(domain="sandbox.test")
        msg.set_content("Sent with a plain SMTP login, relayed upstream with OAuth 2.0 (XOAUTH2).\n")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S) as client:
                client.login(DEMO_LOGIN, self.password)
                client.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise DemoFailed(f"sending through the relay failed: {exc}") from exc
        return subject, msgid

    def fetch(self, port: int, msgid: str) -> int:
        """Find the message by Message-ID over the relay's POP3 with poplib; return its number."""
        import poplib  # noqa: PLC0415 - see send()
        from email import message_from_bytes  # noqa: PLC0415

        deadline_polls = 50
        for _ in range(deadline_polls):
            try:
                client = poplib.POP3("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
                try:
                    client.user(DEMO_LOGIN)
                    client.pass_(self.password)
                    count, _size = client.stat()
                    for number in range(count, 0, -1):
                        _resp, lines, _octets = client.retr(number)
                        if message_from_bytes(b"\r\n".join(lines))["Message-ID"] == msgid:
                            return number
                finally:
                    with contextlib.suppress(OSError, poplib.error_proto):
                        client.quit()
            except (OSError, poplib.error_proto) as exc:
                raise DemoFailed(f"fetching over the relay's POP3 failed: {exc}") from exc
            threading.Event().wait(0.1)  # delivery into the maildrop is asynchronous
        raise DemoFailed("the message did not show up in the POP3 mailbox")

    def fetch_imap(self, port: int, msgid: str) -> int:
        """Find the message by Message-ID over the relay's IMAP with imaplib; return its number."""
        import imaplib  # noqa: PLC0415 - see send()
        from email import message_from_bytes  # noqa: PLC0415

        try:
            with imaplib.IMAP4("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S) as client:
                client.login(DEMO_LOGIN, self.password)
                _typ, data = client.select("INBOX", readonly=True)
                for number in range(int(data[0] or 0), 0, -1):
                    _typ, parts = client.fetch(str(number), "(BODY.PEEK[])")
                    raw = parts[0][1] if parts and isinstance(parts[0], tuple) else b""
                    if message_from_bytes(raw)["Message-ID"] == msgid:
                        client.logout()
                        return number
        except (OSError, imaplib.IMAP4.error) as exc:
            raise DemoFailed(f"fetching over the relay's IMAP failed: {exc}") from exc
        raise DemoFailed("the message did not show up in the IMAP mailbox")

    def by_hand(self, smtp_port: int, pop3_port: int, imap_port: int) -> str:
        """How to try the running demo with other clients."""
        pw = self.password
        return (
            "Try it by hand while the demo runs (local login " f"{DEMO_LOGIN}, password {pw}):\n"
            f"  swaks --server 127.0.0.1:{smtp_port} --auth PLAIN --auth-user {DEMO_LOGIN} "
            f"--auth-password '{pw}' --from {DEMO_MAILBOX} --to {DEMO_MAILBOX}\n"
            f"  printf 'USER {DEMO_LOGIN}\\r\\nPASS {pw}\\r\\nLIST\\r\\nRETR 1\\r\\nQUIT\\r\\n' "
            f"| nc 127.0.0.1 {pop3_port}\n"
            f"  python3 -c \"import poplib; p=poplib.POP3('127.0.0.1', {pop3_port}); p.user('{DEMO_LOGIN}'); "
            f"p.pass_('{pw}'); print(p.list()); p.quit()\"\n"
            f"  curl -u '{DEMO_LOGIN}:{pw}' 'imap://127.0.0.1:{imap_port}/INBOX;UID=1'\n"
            f"  relay send-test {DEMO_ACCOUNT} --to {DEMO_MAILBOX} -c {self.config_path}\n"
            f"  relay check -c {self.config_path}\n"
            "Press Ctrl-C to stop."
        ) if not self.args.once else (
            f"(--once: stopping. Without it the demo keeps serving on 127.0.0.1:{smtp_port}, "
            f":{pop3_port} and :{imap_port} for swaks, fetchmail, curl, telnet ...)"
        )

    async def serve_until_signal(self) -> None:
        """Keep serving until SIGINT or SIGTERM."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        say("\nStopping the demo ...")


class DemoFailed(Exception):
    """A demo step failed; the message says which and why."""

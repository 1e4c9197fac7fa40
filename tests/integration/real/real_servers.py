"""Private Dovecot and Postfix instances on loopback ports, for tests with real mail servers.

Nothing here touches /etc: every instance writes its own configuration into a temporary
directory, listens on free 127.0.0.1 ports and is stopped (and its directory removed) by the
fixtures in conftest.py. Setup steps that need root (the ``vmail`` system user) are idempotent, so
a fresh CI machine with the Debian packages installed needs nothing else. See PROTOCOLS.md §8.

The OAuth side is the project's sandbox provider: Dovecot calls its POST /introspect.
"""

from __future__ import annotations

import email
import email.policy
import fcntl
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.app_harness import wait_until

from relay.tlsutil import generate_self_signed

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
START_TIMEOUT_S = 20.0
MAIL_USER = "vmail"


# --- programs and system setup -------------------------------------------------------------------

def find_program(name: str) -> str | None:
    """Return the full path of ``name`` on PATH or in the sbin directories, or None."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN_DIRS)
    return shutil.which(name, path=path)


def require_program(name: str, package: str | None = None) -> str:
    """Return the path of ``name``; if missing, fail under CI=true, otherwise skip the test."""
    found = find_program(name)
    if found is not None:
        return found
    message = (f"program '{name}' not found: apt-get install -y --no-install-recommends "
               f"{package or name} (see tests/integration/real/conftest.py)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")  # pragma: no cover  (skip raises)


def require_root() -> None:
    """Dovecot and Postfix private instances need root (setuid to vmail/postfix); skip or fail."""
    if os.geteuid() == 0:
        return
    message = "real mail servers need root (they switch to the vmail/postfix users)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """Create a system user without home or shell unless it exists (idempotent; serialised by a lock
    file, so two test processes starting servers at once do not race in useradd)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    with open(f"/tmp/relay-tests-useradd-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", name],
                           check=False, capture_output=True)
            return pwd.getpwnam(name)


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = START_TIMEOUT_S, what: str = "server") -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}: {exc}") from None
            time.sleep(0.05)


def wait_for_exit(pid: int, what: str, timeout_s: float = 15.0) -> None:
    """Wait until process ``pid`` (a daemon we told to stop) has exited."""

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout_s, f"{what} to stop")


def make_base_dir(prefix: str) -> Path:
    """Make a world-traversable temp dir (pytest's tmp dirs are 0700, which vmail cannot enter)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


# --- Dovecot -------------------------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
auth_verbose = yes
auth_verbose_passwords = no
protocols = {protocols}
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = xoauth2 oauthbearer
auth_cache_size = 0
# Dovecot's default 2 s penalty per failed login would dominate the suite's run time.
auth_failure_delay = 0
mail_location = maildir:{base}/mail/%u
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
last_valid_uid = {uid}
pop3_uidl_format = %08Xu%08Xv
lmtp_save_to_detail_mailbox = no
recipient_delimiter =
# New mail shows up in IDLE at once (inotify), with a keep-alive every 30 s.
imap_idle_notify_interval = 30 secs
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
service auth {{
  inet_listener auth-postfix {{
    address = 127.0.0.1
    port = {auth_port}
  }}
}}
# Dovecot delays logins from an IP after failures (2 s, 4 s ... up to 15 s, per IP via anvil); all
# our clients are 127.0.0.1, so tests that fail on purpose would slow the others. Documented switch:
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%u allow_all_users=yes
}}
"""

DOVECOT_IMAP_CONF = """\
# COMPRESS=DEFLATE (RFC 4978), to show it works end to end through the relay's splice.
protocol imap {{
  mail_plugins = $mail_plugins imap_zlib
}}
"""

OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = email
active_attribute = active
active_value = true
"""

DOVECOT_PACKAGES = {"pop3": "dovecot-pop3d", "imap": "dovecot-imapd", "lmtp": "dovecot-lmtpd"}
"""The Debian package that brings each Dovecot protocol (dovecot-core brings the daemon)."""


@dataclass
class DovecotServer:
    """A private Dovecot 2.3: LMTP, auth for Postfix, and POP3 and/or IMAP (each with STARTTLS and
    TLS on connect), every port a free loopback port. ``protocols`` picks the mail protocols; the
    ports of one not served stay 0 (Dovecot opens no listener there)."""

    base: Path
    introspection_url: str
    cert_file: Path
    key_file: Path
    protocols: tuple[str, ...] = ("pop3",)
    pop3_port: int = 0
    pop3s_port: int = 0
    imap_port: int = 0
    imaps_port: int = 0
    lmtp_port: int = 0
    auth_port: int = 0

    @property
    def config_file(self) -> Path:
        """The dovecot.conf of this instance."""
        return self.base / "dovecot.conf"

    @property
    def packages(self) -> str:
        """The Debian packages this instance needs."""
        return " ".join(["dovecot-core", *(DOVECOT_PACKAGES[p] for p in (*self.protocols, "lmtp"))])

    def _ports(self) -> tuple[str, ...]:
        served = {"pop3": ("pop3_port", "pop3s_port"), "imap": ("imap_port", "imaps_port")}
        return (*(name for p in self.protocols for name in served[p]), "lmtp_port", "auth_port")

    def write_config(self) -> None:
        """Write dovecot.conf and the oauth2 passdb file (ports chosen now if still 0)."""
        user = ensure_system_user(MAIL_USER)
        for name in self._ports():
            if not getattr(self, name):
                setattr(self, name, free_port())
        (self.base / "mail").mkdir(parents=True, exist_ok=True)
        os.chown(self.base / "mail", user.pw_uid, user.pw_gid)
        (self.base / "oauth2.conf.ext").write_text(OAUTH2_CONF.format(url=self.introspection_url))
        conf = DOVECOT_CONF.format(
            base=self.base, cert=self.cert_file, key=self.key_file, uid=user.pw_uid,
            gid=user.pw_gid, protocols=" ".join((*self.protocols, "lmtp")), pop3_port=self.pop3_port,
            pop3s_port=self.pop3s_port, imap_port=self.imap_port, imaps_port=self.imaps_port,
            lmtp_port=self.lmtp_port, auth_port=self.auth_port)
        if "imap" in self.protocols:
            conf += DOVECOT_IMAP_CONF.format()
        self.config_file.write_text(conf)

    def start(self) -> None:
        """Start the daemon and wait until its mail protocols, LMTP and auth accept connections."""
        self.write_config()
        # The daemon inherits stdout/stderr: a pipe would never reach EOF, so use a file.
        out_file = self.base / "dovecot.stderr"
        with out_file.open("wb") as out:
            code = subprocess.call([require_program("dovecot", self.packages), "-c",
                                    str(self.config_file)], stdout=out, stderr=out, timeout=30)
        if code != 0:
            raise RuntimeError(f"dovecot -c {self.config_file} failed ({code}): "
                               f"{out_file.read_text(errors='replace').strip()} "
                               f"{self.log_text()[-2000:]}")
        for name in self._ports():
            wait_for_port(getattr(self, name), what="dovecot")

    def stop(self) -> None:
        """Stop the daemon (SIGTERM to the master) and wait until it has gone."""
        pid_file = self.base / "run" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return

        wait_for_exit(pid, "dovecot")

    def log_text(self) -> str:
        """Return Dovecot's log so far (empty if none)."""
        try:
            return (self.base / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def maildir(self, mailbox: str) -> Path:
        """Return the Maildir of ``mailbox`` (it may not exist yet)."""
        return self.base / "mail" / mailbox

    def messages(self, mailbox: str) -> list[bytes]:
        """Return the raw bytes of every message in new/ and cur/, oldest first by file name."""
        root = self.maildir(mailbox)
        files = [p for sub in ("new", "cur") if (root / sub).is_dir()
                 for p in (root / sub).iterdir() if p.is_file()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    def clear_mailbox(self, mailbox: str) -> None:
        """Delete every message (and Dovecot's index/uidlist) of ``mailbox``."""
        root = self.base / "mail" / mailbox
        if root.exists():
            shutil.rmtree(root)

    def deliver(self, mailbox: str, message: bytes) -> None:
        """Deliver ``message`` into ``mailbox`` through Dovecot's LMTP."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=30) as lmtp:
            lmtp.sendmail("sender@example.org", [mailbox], message)

    def wait_for_messages(self, mailbox: str, count: int, timeout_s: float = 30.0) -> list[bytes]:
        """Wait until ``mailbox`` holds at least ``count`` messages and return them."""
        wait_until(lambda: len(self.messages(mailbox)) >= count, timeout_s,
                   f"{count} message(s) in {mailbox}")
        return self.messages(mailbox)


# --- Postfix -------------------------------------------------------------------------------------

POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
myhostname = upstream.test
mydomain = upstream.test
myorigin = upstream.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 192.0.2.1/32
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
default_transport = error:no outside mail in tests
relay_transport = error:no outside mail in tests
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = regexp:{base}/vmailbox.regexp
virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}
lmtp_destination_recipient_limit = 1
message_size_limit = 52428800
smtpd_banner = $myhostname ESMTP Postfix (xoauth2-relay tests)
biff = no
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{auth_port}
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_junk_command_limit = 1000
anvil_rate_time_unit = 60s
default_process_limit = 100
"""

POSTFIX_MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class PostfixServer:
    """A private Postfix: submission with STARTTLS and SASL via Dovecot, LMTP into Dovecot."""

    base: Path
    dovecot: DovecotServer
    domain: str
    smtp_port: int = 0

    def write_config(self) -> None:
        """Write main.cf, master.cf and the virtual mailbox table into the private directory."""
        if not self.smtp_port:
            self.smtp_port = free_port()
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        postfix = pwd.getpwnam("postfix")
        for sub in ("queue", "data"):
            (self.base / sub).mkdir(exist_ok=True)
        os.chown(self.base / "data", postfix.pw_uid, postfix.pw_gid)
        # Mailboxes exist for alice, bob and any t-<id>; others get Postfix's real 550 5.1.1.
        pattern = re.escape(self.domain)
        (self.base / "vmailbox.regexp").write_text(
            f"/^(alice|bob|t-[a-z0-9-]+)@{pattern}$/ OK\n")
        (self.base / "main.cf").write_text(POSTFIX_MAIN_CF.format(
            base=self.base, domain=self.domain, lmtp_port=self.dovecot.lmtp_port,
            auth_port=self.dovecot.auth_port, cert=self.dovecot.cert_file,
            key=self.dovecot.key_file))
        (self.base / "master.cf").write_text(POSTFIX_MASTER_CF.format(smtp_port=self.smtp_port))

    def _postfix(self, *args: str) -> tuple[int, str]:
        # The master inherits stdout/stderr: a pipe would never reach EOF, so use a file.
        out_file = self.base / "postfix.out"
        with out_file.open("wb") as out:
            code = subprocess.call([require_program("postfix"), "-c", str(self.base), *args],
                                   stdout=out, stderr=out, timeout=60)
        return code, out_file.read_text(errors="replace").strip()

    def start(self) -> None:
        """Start the master (``postfix -c DIR start``) and wait for the SMTP port."""
        self.write_config()
        code, output = self._postfix("start")
        if code != 0:
            raise RuntimeError(f"postfix -c {self.base} start failed ({code}): {output} "
                               f"{self.log_text()[-2000:]}")
        wait_for_port(self.smtp_port, what="postfix")

    def stop(self) -> None:
        """Stop immediately (``postfix abort``) and wait until the master has exited."""
        pid_file = self.base / "queue" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        self._postfix("abort")
        if pid:
            wait_for_exit(pid, "postfix")

    def log_text(self) -> str:
        """Return Postfix's maillog so far."""
        try:
            return (self.base / "maillog").read_text(errors="replace")
        except OSError:
            return ""


def strip_trace_headers(raw: bytes) -> bytes:
    """Return a message without the headers servers add in transit (Received, Return-Path ...).

    What remains must equal what the client sent: this is how tests compare bytes end to end.
    """
    added = {b"received", b"return-path", b"delivered-to", b"x-original-to"}
    head, sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name in added
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def header_value(raw: bytes, name: str) -> str | None:
    """Return the first ``name`` header of a raw message, or None."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    value = msg.get(name)
    return None if value is None else str(value)


def make_cert_dir(base: Path) -> tuple[Path, Path]:
    """Create a self-signed certificate for localhost/127.0.0.1 readable by the daemons."""
    cert, key = generate_self_signed(base / "tls")
    (base / "tls").chmod(0o755)
    return cert, key

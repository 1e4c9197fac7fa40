"""Real IMAP clients through the relay to Dovecot: curl, fetchmail, getmail6, mbsync.

Each test delivers messages (LMTP) into a fresh mailbox, fetches them through the relay with the
client, and compares the bytes with what Dovecot serves directly (``direct_fetch``) or, where the
client stores mail with LF line ends and its own trace headers, with the delivered message.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from imap_world import PASSWORD, mailbox, user
from real_clients import make_message, run_client
from real_servers import ensure_system_user, make_base_dir, strip_trace_headers
from test_imap_proxy_imaplib import direct_fetch

pytestmark = pytest.mark.real_servers


def deliver(world, i: int, count: int) -> list[bytes]:
    """Deliver ``count`` messages into account ``i``'s mailbox; return them."""
    messages = [make_message(f"client test {n}", body_lines=20 + n, to=mailbox(i))
                for n in range(count)]
    for message in messages:
        world.dovecot.deliver(mailbox(i), message)
    return messages


def normalized(raw: bytes) -> bytes:
    """A message without transit headers and with LF line ends, for clients that rewrite both."""
    return strip_trace_headers(raw).replace(b"\r\n", b"\n")


def maildir_messages(root: Path) -> list[bytes]:
    """The messages stored in a Maildir (new/ and cur/), ordered by their Subject's number."""
    files = [p for sub in ("new", "cur") for p in (root / sub).glob("*") if p.is_file()]
    return sorted((p.read_bytes() for p in files), key=lambda m: m.split(b"Subject: ")[1][:20])


@pytest.mark.parametrize("scheme", ["imap", "imaps", "imap-starttls"])
def test_curl_fetches_byte_exact(imap_world, account: int, scheme: str) -> None:
    """curl imap:// (plain and --ssl-reqd STARTTLS) and imaps:// fetch exactly Dovecot's bytes."""
    deliver(imap_world, account, 1)
    ports = imap_world.relay.ports
    url_scheme, port = {"imap": ("imap", ports["none"]), "imaps": ("imaps", ports["implicit"]),
                        "imap-starttls": ("imap", ports["starttls"])}[scheme]
    args = ["curl", "-sS", "--max-time", "30", "--cacert", str(imap_world.cert),
            "-u", f"{user(account)}:{PASSWORD}", f"{url_scheme}://127.0.0.1:{port}/INBOX;UID=1"]
    if scheme == "imap-starttls":
        args.insert(1, "--ssl-reqd")
    proc = run_client(args, package="curl")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == direct_fetch(imap_world, account, b"1")


def test_curl_wrong_password_fails_cleanly(imap_world, account: int) -> None:
    """curl with a wrong password gets a login failure (exit 67), not a hang or a crash."""
    proc = run_client(["curl", "-sS", "--max-time", "30", "-u", f"{user(account)}:nope",
                       f"imap://127.0.0.1:{imap_world.relay.ports['none']}/INBOX;UID=1"],
                      package="curl")
    assert proc.returncode == 67, proc.stderr.decode()


def test_fetchmail_imap(imap_world, account: int, tmp_path: Path) -> None:
    """fetchmail (protocol IMAP) fetches every message; each equals the delivered one."""
    messages = deliver(imap_world, account, 3)
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f'poll 127.0.0.1 service {imap_world.relay.ports["none"]} protocol IMAP '
                  f'auth password\n  user "{user(account)}" password "{PASSWORD}" is "tester" here\n'
                  f'  keep fetchall sslproto ""\n  mda "/bin/sh -c \'cat > {out}/msg-$$\'"\n')
    rc.chmod(0o600)
    proc = run_client(["fetchmail", "-f", str(rc), "--nosyslog", "--invisible", "-v",
                       "--pidfile", str(tmp_path / "fetchmail.pid")], timeout_s=60)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-2000:]
    got = sorted((p.read_bytes() for p in out.glob("msg-*")),
                 key=lambda m: m.split(b"Subject: ")[1][:20])
    assert [normalized(m) for m in got] == [normalized(m) for m in messages]


def test_getmail6_imap_retriever(imap_world, account: int, tmp_path: Path) -> None:
    """getmail6's SimpleIMAPRetriever stores every message into a Maildir unchanged."""
    messages = deliver(imap_world, account, 3)
    # getmail refuses to deliver as root: it delivers as `user`, so the Maildir is that user's.
    vmail = ensure_system_user("vmail")
    base = make_base_dir("relay-getmail-")
    maildir = base / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
        os.chown(maildir / sub, vmail.pw_uid, vmail.pw_gid)
    os.chown(maildir, vmail.pw_uid, vmail.pw_gid)
    rc = tmp_path / "getmailrc"
    rc.write_text(f"[retriever]\ntype = SimpleIMAPRetriever\nserver = 127.0.0.1\n"
                  f"port = {imap_world.relay.ports['none']}\nusername = {user(account)}\n"
                  f"password = {PASSWORD}\nmailboxes = (\"INBOX\",)\nrecord_mailbox = false\n\n"
                  f"[destination]\ntype = Maildir\npath = {maildir}/\nuser = vmail\n\n"
                  f"[options]\nread_all = true\ndelete = false\ndelivered_to = false\n"
                  f"received = false\nverbose = 2\n")
    proc = run_client(["getmail", f"--rcfile={rc}", f"--getmaildir={tmp_path}"], timeout_s=60,
                      package="getmail6")
    try:
        assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
        got = maildir_messages(maildir)
        assert [normalized(m) for m in got] == [normalized(m) for m in messages]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_mbsync_pull(imap_world, account: int, tmp_path: Path) -> None:
    """isync/mbsync pulls INBOX into a Maildir; every message arrives unchanged."""
    messages = deliver(imap_world, account, 3)
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"IMAPAccount relay\nHost 127.0.0.1\nPort {imap_world.relay.ports['none']}\n"
                  f"User {user(account)}\nPass \"{PASSWORD}\"\nSSLType None\nAuthMechs LOGIN\n\n"
                  f"IMAPStore remote\nAccount relay\n\n"
                  f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\n\n"
                  f"Channel pull\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\n"
                  f"Sync Pull\nSyncState *\n")
    proc = run_client(["mbsync", "-c", str(rc), "-a"], timeout_s=60, package="isync")
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
    got = maildir_messages(local / "INBOX")
    # mbsync adds its own X-TUID header (its sync bookkeeping) to every message it stores.
    got = [re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", normalized(m)) for m in got]
    assert got == [normalized(m) for m in messages]

"""neomutt (batch, under a pseudo-terminal) reads a message through the relay's IMAP."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from imap_world import PASSWORD, mailbox, user
from real_clients import make_message
from real_servers import require_program, wait_until
from test_imap_proxy_imaplib import direct_fetch

pytestmark = pytest.mark.real_servers


def test_neomutt_pipes_the_message_byte_exact(imap_world, account: int, tmp_path: Path) -> None:
    """neomutt opens INBOX over IMAP through the relay and pipes message 1 to a file unchanged."""
    neomutt = require_program("neomutt")
    script = require_program("script", "bsdutils")
    message = make_message("neomutt", to=mailbox(account))
    imap_world.dovecot.deliver(mailbox(account), message)
    out = tmp_path / "piped.eml"
    rc = tmp_path / "muttrc"
    folder = f"imap://127.0.0.1:{imap_world.relay.ports['none']}/INBOX"
    # No local folders (a fresh HOME would make neomutt ask to create ~/Mail, eating the keys).
    rc.write_text(f'set folder="{folder}"\nset spoolfile="{folder}"\nset record=""\nset postponed=""\n'
                  'set mbox=""\n'
                  f'set imap_user="{user(account)}"\nset imap_pass="{PASSWORD}"\n'
                  "set ssl_starttls=no\nset ssl_force_tls=no\nset wait_key=no\nset quit=yes\n"
                  "set pipe_decode=no\nset header_cache=\nset message_cachedir=\n"
                  "set imap_passive=no\nset mail_check=0\nset timeout=5\n")
    push = 'push "<pipe-message>cat > ' + str(out) + '<enter><quit>"'
    command = f"{neomutt} -n -F {rc} -R -f {folder} -e {shlex.quote(push)}"
    proc = subprocess.Popen([script, "-qec", command, "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, "HOME": str(tmp_path), "TERM": "xterm", "COLUMNS": "120",
                                 "LINES": "40"})
    try:
        wait_until(lambda: out.exists() and out.stat().st_size > 0, 30, "neomutt to pipe the message")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert out.read_bytes().replace(b"\n", b"\r\n") == direct_fetch(imap_world, account, b"1")

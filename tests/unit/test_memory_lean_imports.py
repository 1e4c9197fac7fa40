"""What `relay serve` does not import: httpx's CLI, httpcore's trio probe, and prometheus_client
unless metrics are collected."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from relay.lean_imports import UNUSED_OPTIONAL_IMPORTS, skip_unused_optional_imports

REPO_ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import asyncio, http.server, json, sys, threading
    from relay.lean_imports import skip_unused_optional_imports
    marked = skip_unused_optional_imports()
    from relay.tokens.manager import new_http_client

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = b'{"access_token": "x"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def main():
        async with new_http_client(10) as http:
            reply = await http.post(f"http://127.0.0.1:{server.server_port}/token", data={"a": "b"})
            return reply.json()

    answer = asyncio.run(main())
    server.shutdown()
    loaded = sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})
    print(json.dumps({"marked": marked, "answer": answer, "loaded": loaded,
                      "cli": sys.modules.get("httpx._main", "absent") is None}))
""")


def test_serve_process_skips_unused_optional_imports_and_httpx_still_posts() -> None:
    """In a fresh interpreter: after skip_unused_optional_imports, a token-style POST over loopback
    works and neither trio, click, pygments nor rich was imported."""
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["marked"] == list(UNUSED_OPTIONAL_IMPORTS)
    assert result["answer"] == {"access_token": "x"}
    assert result["cli"] is True
    assert not {"trio", "click", "pygments", "rich", "outcome", "sortedcontainers"} & set(result["loaded"])


def test_already_imported_modules_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module the process already imported stays (whatever uses it keeps working); only the
    ones not imported yet are marked absent."""
    already = types.ModuleType("trio")
    monkeypatch.setitem(sys.modules, "trio", already)
    monkeypatch.setitem(sys.modules, "httpx._main", None)  # restored (or removed) after the test
    monkeypatch.delitem(sys.modules, "httpx._main")
    assert skip_unused_optional_imports() == ["httpx._main"]
    assert sys.modules["trio"] is already and sys.modules["httpx._main"] is None


def test_prometheus_client_is_imported_only_with_metrics() -> None:
    """The serve path (CLI, app, SMTP/POP3/IMAP listeners) imports no prometheus_client; building
    RelayMetrics (admin listener or alerts configured) imports it and renders the exposition."""
    code = ("import sys\n"
            "import relay.cli; relay.cli.build_parser()\n"
            "import relay.app, relay.smtp.server, relay.pop3.server, relay.imap.server\n"
            "before = 'prometheus_client' in sys.modules\n"
            "from relay.metrics import RelayMetrics\n"
            "text = RelayMetrics(['sales']).render()\n"
            "print(before, b'xoauth2relay_' in text)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]

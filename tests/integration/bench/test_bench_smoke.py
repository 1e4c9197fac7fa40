"""Smoke test for bench/: the tiny matrix runs end to end, writes its table and verifies delivery.

It asserts that the benchmark works (relay and direct targets, exactly-once byte-exact delivery,
relay metrics present), never how fast anything is: performance figures on a shared CI machine
are noise. When emailproxy is installed it runs as a third target; its sessions may fail or hang
(that is what it is measured for), but what it acknowledged must have arrived exactly once.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
BASE_TARGETS = {"direct", "relay", "floor"}  # floor: direct through a byte forwarder


@pytest.mark.timeout(240)
def test_quick_bench_writes_table_and_verifies_delivery(tmp_path: Path) -> None:
    """`python -m bench run --quick` delivers every message exactly once through every target."""
    out, raw = tmp_path / "results.md", tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--repeats", "1", "--out", str(out),
         "--json", str(raw)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=220, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    table = out.read_text()
    assert "| cell | direct msg/s | relay msg/s | relay/direct | target | met | floor/direct |" in table
    assert "| SMTP 1 KB, C=1 |" in table and "| POP3 10 KB, C=2 |" in table
    assert "token requests during a cold burst" in table
    assert "FAIL" not in table

    data = json.loads(raw.read_text())
    with_emailproxy = importlib.util.find_spec("emailproxy") is not None
    extra = {"emailproxy"} if with_emailproxy else set()
    targets = BASE_TARGETS | extra
    assert set(data["targets"]) == targets
    for cell, by_target in data["cells"].items():
        assert set(by_target) == targets, cell
        for target, runs in by_target.items():
            for run in runs:
                verify = run["verify"]
                if target in BASE_TARGETS:
                    assert run["failed"] == 0 and run["hung"] == 0, (cell, target, run["errors"])
                    assert run["messages_ok"] > 0, (cell, target)
                assert verify["checked"] == run["messages_ok"], (cell, target, verify)
                assert verify.get("missing", 0) == verify.get("duplicates", 0) == 0, (cell, target)
                assert verify.get("mismatches", 0) == 0, (cell, target)
    relay = data["relay"]
    assert relay["cold_burst_token_requests"] >= 1
    assert relay["idle_sessions_open"] == relay["idle_sessions"]
    assert relay["idle_rss_after_burst_mb"] >= relay["idle_rss_mb"] > 0
    assert set(data["pool"]) == {"direct", "relay", "relay+pool"} | extra
    if with_emailproxy:
        assert "| cell | emailproxy msg/s | emailproxy/direct |" in table
        assert data["emailproxy"]["startup_s"] > 0 and data["emailproxy"]["seq_ok"] > 0

"""`python -m bench graph --quick` runs end to end: both paths deliver every message exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_bench_graph_quick_writes_a_verified_table(tmp_path: Path) -> None:
    """The Graph cell table has a row per cell and path, each delivered ok with 0 failed/hung."""
    out = tmp_path / "graph.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bench", "graph", "--quick", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| SMTP 100 KB")]
    assert len(rows) == 4
    assert {row.split("|")[2].strip() for row in rows} == {"smtp", "graph"}
    for row in rows:
        assert "| 0/0 | ok (" in row, row  # 10 at C=1, 8 at C=4 (2 x 4)

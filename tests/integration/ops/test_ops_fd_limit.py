"""Issue 22 item 4 through `relay serve`: with a hard open-files limit too low for
limits.max_connections, the relay starts with a lower max_connections and says so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ops_helpers import OpsSetup
from support.serve import ServeProcess, relay_cmd

NOFILE = 300


class LimitedServe(ServeProcess):
    """`relay serve` started with RLIMIT_NOFILE soft = hard = ``nofile``."""

    def __init__(self, config_path: Path, log_path: Path, nofile: int) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")

        python, _, _ = relay_cmd()
        wrapper = ("import resource, runpy, sys; "
                   f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                   f"sys.argv = ['relay', 'serve', '-c', {str(config_path)!r}]; "
                   "runpy.run_module('relay', run_name='__main__')")
        self.proc = subprocess.Popen([python, "-c", wrapper], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.ports: dict[str, int] = {}


def test_serve_caps_max_connections_to_the_descriptor_limit(ops: OpsSetup, tmp_path: Path) -> None:
    """Hard limit 300 with the default max_connections 1000 on two listeners: a WARNING names the
    setting and the fix, and both listeners run."""
    ops.seed("ops", "ops@sandbox.test")
    proc = LimitedServe(ops.write(), tmp_path / "serve.log", NOFILE)
    try:
        proc.wait_listening()
        output = proc.output()
        assert "limits.max_connections 1000 needs 4064 file descriptors but the limit is 300" in output
        assert f"using max_connections {(NOFILE - 64) // 4}" in output
    finally:
        proc.close()

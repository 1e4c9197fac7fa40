"""Podman helpers for the container test: commands with output in files, base image, quirk fixes.

Everything podman prints goes to files, never to a pipe (CONTAINERS.md: piping `podman run -d`'s
stderr can hang). The quirk fixes (ulimits, runc) are applied only when a probe run fails with
their symptom, through a CONTAINERS_CONF file of the test's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE_IMAGE = "localhost/xoauth2-relay-testbase:bookworm"
DEBIAN_MIRROR = os.environ.get("RELAY_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
QUIRK_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
QUIRK_SYMPTOMS = ("rlimit", "cgroups in hybrid mode", "OCI permission denied")


@dataclass
class Result:
    """A finished command: exit code and its output (read back from files)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Podman:
    """Runs podman with this test's environment, logging output to a work directory."""

    workdir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    calls: int = 0

    def run(self, *args: str, timeout_s: float = 120, check: bool = False) -> Result:
        """Run ``podman ARGS``; output goes to files in ``workdir``; return the Result."""
        return self.command(["podman", *args], timeout_s=timeout_s, check=check)

    def command(self, argv: list[str], *, timeout_s: float = 120, check: bool = False) -> Result:
        """Run any command with the podman environment, output in files."""
        self.calls += 1
        out_path = self.workdir / f"cmd{self.calls:03d}.out"
        err_path = self.workdir / f"cmd{self.calls:03d}.err"
        start = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env,
                                  timeout=timeout_s, check=False)
        result = Result(proc.returncode, out_path.read_text(errors="replace"),
                        err_path.read_text(errors="replace"), time.monotonic() - start)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:4])} ... failed ({result.returncode}):\n"
                                 f"{result.stderr[-3000:]}\n{result.stdout[-2000:]}")
        return result

    def apply_quirk_fixes_if_needed(self, image: str) -> str:
        """Probe ``podman run``; on a known quirk, switch to our CONTAINERS_CONF. Return what was done."""
        probe = self.run("run", "--rm", "--network", "none", image, "true", timeout_s=120)
        if probe.returncode == 0:
            return "none needed"
        if not any(s in probe.stderr for s in QUIRK_SYMPTOMS):
            raise AssertionError(f"podman cannot run a container:\n{probe.stderr[-3000:]}")
        conf = self.workdir / "containers.conf"
        conf.write_text(QUIRK_CONF)
        self.env["CONTAINERS_CONF"] = str(conf)
        again = self.run("run", "--rm", "--network", "none", image, "true", timeout_s=120)
        if again.returncode != 0:
            raise AssertionError("podman cannot run a container even with the ulimit/runc fixes:\n"
                                 f"{again.stderr[-3000:]}")
        return "CONTAINERS_CONF with default_ulimits + runtime=runc (symptom: " + \
            next(s for s in QUIRK_SYMPTOMS if s in probe.stderr) + ")"


def ensure_base_image(podman: Podman) -> str:
    """Build the local bookworm + python3 base image once (cached by tag); return how it was got."""
    if podman.run("image", "exists", BASE_IMAGE).returncode == 0:
        return "cached"
    root = Path(tempfile.mkdtemp(prefix="relay-base-", dir=podman.workdir))
    tarball = root / "rootfs.tar"
    try:
        if shutil.which("mmdebstrap"):
            podman.command(["mmdebstrap", "--variant=minbase", "--mode=root",
                            "--include=python3,python3-venv,ca-certificates", "bookworm", str(tarball),
                            DEBIAN_MIRROR], timeout_s=900, check=True)
            podman.command(["podman", "import", str(tarball), BASE_IMAGE], timeout_s=300, check=True)
            how = "mmdebstrap"
        else:
            tree = root / "tree"
            podman.command(["debootstrap", "--variant=minbase",
                            "--include=python3,python3-venv,ca-certificates", "bookworm", str(tree),
                            DEBIAN_MIRROR], timeout_s=900, check=True)
            podman.command(["sh", "-c", f"tar -C {tree} -c . | podman import - {BASE_IMAGE}"],
                           timeout_s=300, check=True)
            how = "debootstrap"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return how

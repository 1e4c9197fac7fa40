"""``python -m relay.sandbox``: run the sandbox mail world until SIGINT/SIGTERM.

Prints one JSON line (URLs, ports, ca_file, client id/secret) on stdout once every server listens,
for `relay demo`, benchmarks and container tests that start it as a subprocess.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from relay.sandbox.world import SandboxWorld


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m relay.sandbox",
                                     description="Run the loopback sandbox mail world (OAuth, SMTP, POP3).")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="directory for the generated TLS certificate (default: a temporary one)")
    parser.add_argument("--token-lifetime", type=int, default=3600, metavar="S",
                        help="access token lifetime in seconds (default 3600)")
    parser.add_argument("--smtp-port", type=int, default=0, metavar="N")
    parser.add_argument("--pop3-port", type=int, default=0, metavar="N")
    parser.add_argument("--oauth-port", type=int, default=0, metavar="N")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the world, print its description, wait for a signal, stop."""
    args = parse_args(argv)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        world = SandboxWorld.start(args.state_dir, token_lifetime_s=args.token_lifetime,
                                   smtp_port=args.smtp_port, pop3_port=args.pop3_port,
                                   oauth_port=args.oauth_port)
    except OSError as exc:
        print(f"sandbox: cannot start: {exc}", file=sys.stderr)
        return 1
    with world:
        print(json.dumps(world.describe()), flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

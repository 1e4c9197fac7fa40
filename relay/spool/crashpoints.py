"""Named points where the crash-safety tests kill the relay with SIGKILL.

``RELAY_TEST_CRASH_AT=<point>`` in the environment of a `relay serve` process makes it kill itself
(SIGKILL: no cleanup, no flush) when it reaches that point; the test then restarts it without the
variable and checks what was delivered. Unset (always, outside those tests) a point costs one
comparison. Points: ``writing`` (content partly in the spool's tmp file), ``written`` (file
fsynced, not yet renamed into the queue), ``committed`` (in the queue, before the client's 250),
``upstream_data`` (part of the content sent upstream, no final dot), ``upstream_accepted``
(upstream said 250, the spool entry not yet removed).
"""

from __future__ import annotations

import os
import signal

ENV = "RELAY_TEST_CRASH_AT"
_armed = os.environ.get(ENV) or None


def crash_point(name: str) -> None:
    """SIGKILL this process if the tests armed ``name``."""
    if _armed is not None and _armed == name:
        os.kill(os.getpid(), signal.SIGKILL)

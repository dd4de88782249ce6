"""Named points where a test may have this process killed with SIGKILL.

Crash tests start a real child process with BERTH_CRASHPOINT=<name>; when the child reaches that point it kills
itself, exactly as `kill -9` from outside would, at a place a timer could only hit by luck. Unset (always, outside
those tests), `reached` is one comparison of a module constant.
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("BERTH_CRASHPOINT") or None


def reached(name: str) -> None:
    if _TARGET is not None and name == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)

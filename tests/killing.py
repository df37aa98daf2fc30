"""Killing a real process with SIGKILL at a chosen point of its work (the crash tests)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    """Poll ``ready`` until it holds, then SIGKILL ``proc`` (also if the wait fails); fails if
    ``proc`` ends first (``what`` says what it should not have finished) or after 60 s."""
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, f"{what} finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

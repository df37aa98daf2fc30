"""A benchmark's HTTP server in a process of its own: the benchmark module run with
``--server`` prints ``PORT n`` once it listens, and is stopped with SIGTERM at the end.

The server runs apart so that its CPU is not counted as the client's (the figures compare
client CPU per call), and so that both do not share one event loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class ServerProcess:
    """``python -m <module> --server``, started and waited for.

    Args:
        module: The benchmark module whose ``--server`` mode is the server.
    """

    def __init__(self, module: str) -> None:
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--server"],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

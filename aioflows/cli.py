"""The ``aioflows`` command line.

For now it prints its version and help; ``run``, ``graph`` and ``show`` arrive with flows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioflows",
        description=(
            "Run many async things well: rate-limited concurrent calls, task graphs, "
            "streaming pipelines, resumable batch jobs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"aioflows {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioflows`` console script; returns the exit status."""
    parser = _parser()
    parser.parse_args(argv)
    parser.print_help(sys.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

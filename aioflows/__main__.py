"""``python -m aioflows``: the command line, as the ``aioflows`` script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

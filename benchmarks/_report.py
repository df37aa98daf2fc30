"""What every benchmark shares: its command line, its header, aligned tables, verdicts, and
the no-over-grant check of a limiter (the largest excess over ``burst + T * rate``)."""

from __future__ import annotations

import os
import platform
import time
from argparse import ArgumentParser
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version

__all__ = ["max_excess", "part_parser", "print_header", "print_table", "run_parts", "verdict"]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Plain aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))


def print_header(
    distributions: Sequence[str], rounds: int, warmup: str = "1 warm-up round"
) -> None:
    """The machine, the versions measured, and how many rounds stand behind each median."""
    versions = ", ".join(f"{dist} {version(dist)}" for dist in distributions)
    print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {versions}"
    )
    print(f"{rounds} measured rounds per contender after {warmup}; medians unless noted")


def part_parser(prog: str, description: str, parts: Sequence[str], rounds: int) -> ArgumentParser:
    """The common command line: ``--rounds N`` and a repeatable ``--part NAME``."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"measured rounds (default {rounds})"
    )
    parser.add_argument(
        "--part",
        choices=list(parts),
        action="append",
        help=f"run only this part (repeatable; default: all, in the order {', '.join(parts)})",
    )
    return parser


def run_parts(
    parts: Mapping[str, Callable[[int], None]], chosen: Sequence[str] | None, rounds: int
) -> None:
    """Run the chosen parts (all by default) in their declared order, then the total time."""
    started = time.perf_counter()
    for name, part in parts.items():
        if not chosen or name in chosen:
            part(rounds)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def max_excess(times: list[float], rate: float, burst: float) -> float:
    """Max over windows [t_i, t_j] of (j - i + 1) - (burst + (t_j - t_i) * rate), in O(n).

    With a_k = k - t_k * rate the excess of window (i, j) is a_j - a_i + 1 - burst, so it is
    enough to track the smallest a_i seen so far.
    """
    worst = -float("inf")
    lowest = float("inf")
    for k, t in enumerate(times):
        a = k - t * rate
        lowest = min(lowest, a)
        worst = max(worst, a - lowest)
    return worst + 1 - burst

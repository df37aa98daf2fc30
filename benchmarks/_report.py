"""How every benchmark prints its results: aligned plain-text tables and PASS/FAIL verdicts."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["print_table", "verdict"]


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

"""What a launcher run shows of itself: progress as plain lines or a rich bar, and its summary.

Every frame, line and table is made from one :class:`Snapshot`, taken at once from the run's
counters, so that what one frame says agrees with itself: ``ok + failed`` is the ``done`` of
the bar, the rate and the ETA are worked out from those same numbers, and the pairs found done
in the output on resume are told apart from those of this run (``130/6,064 now, 3,936 done
before``). Off a terminal (``nohup``, CI, a log file) a bar redrawn in place is unreadable, so
the launcher prints one plain line every :data:`PLAIN_EVERY` seconds and a last one instead.
On a terminal the counts are never cut: the text wraps before anything is truncated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PLAIN_EVERY", "Snapshot", "clock", "frame", "plain_line", "summary_table", "took"]

#: Seconds between two plain progress lines off a terminal.
PLAIN_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A run's counters at one moment: everything one line or frame shows."""

    ok: int  # pairs of this run written without an error
    failed: int  # pairs of this run written with one
    retried: int
    to_run: int | None  # pairs this run has to run, when known before it starts (a list)
    before: int  # pairs found done in the output, not run again
    elapsed: float  # seconds since the run started
    per_key: Mapping[str, int]
    quarantined: Sequence[str] = ()
    cached: int = 0  # pairs of ok served from the cache
    tokens: float = 0.0  # reported by the calls (key.report_usage)
    cost: float | None = None  # of those tokens, with prices

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def rate(self) -> float:
        """Pairs finished per second, over this run so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None while unknown."""
        if self.to_run is None or self.rate <= 0:
            return None
        return max(0, self.to_run - self.done) / self.rate


def clock(seconds: float) -> str:
    """``H:MM:SS``, as rich writes an ETA."""
    if not math.isfinite(seconds):
        return "-:--:--"
    whole = round(max(0.0, seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _keys(snap: Snapshot) -> str:
    return " ".join(
        f"{label}:{n:,}" + (" (quarantined)" if label in snap.quarantined else "")
        for label, n in snap.per_key.items()
    )


def _counts(snap: Snapshot) -> str:
    """``130/6,064 now, 3,936 done before | ok 120 failed 10 retried 5 | key-0:65 key-1:70``"""
    done = f"{snap.done:,}" if snap.to_run is None else f"{snap.done:,}/{snap.to_run:,}"
    before = f", {snap.before:,} done before" if snap.before else ""
    cached = f" cached {snap.cached:,}" if snap.cached else ""
    return (
        f"{done} now{before} | ok {snap.ok:,} failed {snap.failed:,} "
        f"retried {snap.retried:,}{cached} | {_keys(snap)}{_usage(snap.tokens, snap.cost)}"
    )


def _usage(tokens: float, cost: float | None) -> str:
    """`` | tokens 12,345 cost 0.1852``: once a call has reported usage."""
    if not tokens:
        return ""
    return f" | tokens {tokens:,.0f}" + ("" if cost is None else f" cost {cost:,.4f}")


def took(seconds: float) -> str:
    """A run's time as the summary writes it: ``4.52 s``, or ``H:MM:SS`` from a minute on."""
    return f"{seconds:.2f} s" if seconds < 60 else clock(seconds)


def _pace(snap: Snapshot, final: bool) -> str:
    if final:
        return f"{snap.rate:,.1f}/s, took {took(snap.elapsed)}"
    eta = snap.eta
    return f"{snap.rate:,.1f}/s" + ("" if eta is None else f", ETA {clock(eta)}")


def plain_line(snap: Snapshot, *, final: str | None = None) -> str:
    """One line for a log file; ``final`` (``"finished"``, ``"stopped"``) marks the last."""
    head = "launch" if final is None else f"launch {final}"
    return f"{head}: {_counts(snap)} | {_pace(snap, final is not None)}"


def frame(snap: Snapshot) -> Any:
    """The rich renderable of a terminal: a bar, then the counts, which wrap, never cut."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, width=24)
    grid.add_column(ratio=1, overflow="fold")
    bar = ProgressBar(total=snap.to_run, completed=snap.done, width=24)
    eta = snap.eta
    tail = f"{snap.rate:,.1f}/s" + ("" if eta is None else f" {clock(eta)}")
    grid.add_row(bar, Text(f"{_counts(snap)} | {tail}", overflow="fold"))
    return grid


def summary_table(
    *,
    total: int,
    succeeded: int,
    failed: int,
    skipped: int,
    retried: int,
    duration_s: float,
    per_key: Mapping[str, int],
    quarantined: Sequence[str],
    cached: int = 0,
    tokens: float = 0.0,
    cost: float | None = None,
    tokens_per_key: Mapping[str, float] | None = None,
    cost_per_key: Mapping[str, float] | None = None,
) -> str:
    """A :class:`~aioflows.LaunchSummary` as a table for a person (its ``str``).

    The cache's and the usage's rows and columns are there only when they say something (a
    pair served from the cache, a call that reported usage), so a plain run's table is as it
    was.
    """
    ran = succeeded + failed
    throughput = ran / duration_s if duration_s > 0 else 0.0
    rows = [
        ("pairs", f"{total:,}", ""),
        ("succeeded", f"{succeeded:,}", ""),
        ("failed", f"{failed:,}", "written with their error; a resume runs them again"),
        ("skipped", f"{skipped:,}", "done before, in the output"),
        ("retried", f"{retried:,}", "calls sent again: failures and throttles"),
        ("took", took(duration_s), f"{throughput:,.1f} pairs/s"),
    ]
    if cached:
        rows.insert(2, ("cached", f"{cached:,}", "of succeeded: served from the cache, no call"))
    if tokens_per_key:
        rows.append(("tokens", f"{tokens:,.0f}", "reported by the calls"))
        if cost is not None:
            rows.append(("cost", f"{cost:,.4f}", "at price_per_1k_tokens"))
    width = max(len(value) for _, value, _ in rows)
    lines = ["launch summary"]
    lines += [f"  {name:<10} {value:>{width}}  {note}".rstrip() for name, value, note in rows]
    if per_key:
        calls = sum(per_key.values())
        label_width = max(3, *(len(label) for label in per_key))
        count_width = max(5, *(len(f"{n:,}") for n in per_key.values()))
        used = tokens_per_key or {}
        costs = cost_per_key or {}
        usage = ""
        if used:
            usage = f"  {'tokens':>12}" + (f"  {'cost':>10}" if cost is not None else "")
        lines.append(
            f"  {'key':<{label_width}} {'calls':>{count_width}}  {'share':>6}  {'/s':>7}{usage}"
        )
        for label, n in per_key.items():
            share = f"{100 * n / calls:.1f}%" if calls else "-"
            per_second = n / duration_s if duration_s > 0 else 0.0
            state = "  quarantined" if label in quarantined else ""
            usage = ""
            if used:
                usage = f"  {used.get(label, 0.0):>12,.0f}"
                if cost is not None:
                    spent = costs.get(label)
                    usage += f"  {'-' if spent is None else f'{spent:,.4f}':>10}"
            lines.append(
                f"  {label:<{label_width}} {n:>{count_width},}  {share:>6}  "
                f"{per_second:>7,.1f}{usage}{state}"
            )
    return "\n".join(lines)

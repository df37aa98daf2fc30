"""Benchmarks of aioflows against hand-written baselines and peer libraries (not tests).

Each module runs as ``python -m benchmarks.<name>``, measures aioflows and its baselines in the
same process run, prints tables of medians of at least five rounds with the ratios, and exits 0.
The latest results are recorded in ``docs/benchmarks.md``.
"""

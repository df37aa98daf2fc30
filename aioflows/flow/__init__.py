"""Flows: task graphs expanded over config grids, run with caching and resume."""

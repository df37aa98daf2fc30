"""Telling async callables from sync ones, the way starlette does."""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["is_async_callable"]


def is_async_callable(obj: Any) -> bool:
    """Whether calling ``obj`` returns a coroutine: an ``async def`` function, a partial of
    one, or an object whose ``__call__`` is one."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(type(obj).__call__)
    )

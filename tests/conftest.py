"""Shared test configuration.

A test module that sets ``VIRTUAL_TIME = True`` runs its async tests on looptime's virtual
clock: the loop's time only advances when every task waits, so timing assertions are exact and
independent of machine load. (Marking sync tests with looptime leaks an event loop, hence the
hook rather than a module-wide ``pytestmark``.)
"""

from __future__ import annotations

import inspect

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        function = getattr(item, "obj", None)
        if getattr(module, "VIRTUAL_TIME", False) and inspect.iscoroutinefunction(function):
            item.add_marker(pytest.mark.looptime)

"""Shared test configuration.

A test module that sets ``VIRTUAL_TIME = True`` runs its async tests on looptime's virtual
clock: the loop's time only advances when every task waits, so timing assertions are exact and
independent of machine load. (Marking sync tests with looptime leaks an event loop, hence the
hook rather than a module-wide ``pytestmark``.)
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator

# Imported now, not lazily at session end: on Python < 3.11.8 an event loop collected in the
# middle of that late import makes pytest exit with "AST constructor recursion depth mismatch".
import hypothesis  # noqa: F401
import pytest
import redis_server as _redis


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        function = getattr(item, "obj", None)
        if getattr(module, "VIRTUAL_TIME", False) and inspect.iscoroutinefunction(function):
            item.add_marker(pytest.mark.looptime)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish() -> None:
    # Collect the loops that looptime leaks now, while nothing else is being imported.
    gc.collect()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_redis.RedisServer]:
    """One real redis-server for the session, started the first time a test asks for it."""
    with _redis.running(tmp_path_factory.mktemp("redis")) as server:
        yield server

"""pytest fixtures for testing agents against a real Postgres:
``pytest_plugins = ["agent_runtime.testing.pytest_plugin"]`` (in a conftest.py or test module),
or ``-p agent_runtime.testing.pytest_plugin``. It works by itself: no async plugin is needed.

- ``agent_runtime_databases``: the session's :class:`TestDatabases` (one private server).
- ``agent_runtime_db_url``: a fresh migrated database for one test, dropped afterwards.
- ``agent_runtime_advance_clock``: ``await agent_runtime_advance_clock(seconds)`` moves that
  database's clock forward (TTLs, visibility timeouts, presence and lock expiry run out without
  sleeping; see :meth:`TestDatabases.advance_clock`).

An ``async def`` test that takes one of these fixtures runs on asyncio through this plugin,
unless pytest-asyncio (``asyncio_mode = auto`` or ``@pytest.mark.asyncio``) or anyio
(``@pytest.mark.anyio``) already runs it. Async fixtures of your own still need one of those.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from .databases import AdvanceClock, TestDatabases

T = TypeVar("T")

_FIXTURES = frozenset({"agent_runtime_databases", "agent_runtime_db_url", "agent_runtime_advance_clock"})


def _in_thread(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Runs a coroutine function on an event loop of its own, in a thread of its own, so that a
    sync fixture works whether or not an event loop runs in this thread (pytest-asyncio's)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(fn(*args)))  # type: ignore[arg-type]
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="agent_runtime-test-databases")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@pytest.fixture(scope="session")
def agent_runtime_databases() -> Iterator[TestDatabases]:
    databases = TestDatabases()
    databases.start()
    try:
        yield databases
    finally:
        databases.stop()


@pytest.fixture
def agent_runtime_db_url(agent_runtime_databases: TestDatabases) -> Iterator[str]:
    url = _in_thread(agent_runtime_databases.create)
    try:
        yield url
    finally:
        _in_thread(agent_runtime_databases.drop, url)


@pytest.fixture
def agent_runtime_advance_clock(agent_runtime_databases: TestDatabases,
                                agent_runtime_db_url: str) -> AdvanceClock:
    """``await advance(seconds)``: the test database's clock, that much later from now on."""
    return functools.partial(agent_runtime_databases.advance_clock, agent_runtime_db_url)


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs an ``async def`` test that uses this plugin's fixtures when no async plugin claimed it
    (pytest-asyncio wraps the tests it runs; anyio's plugin runs before this hook)."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test) or not _FIXTURES & set(pyfuncitem.fixturenames):
        return None
    if pyfuncitem.get_closest_marker("anyio") is not None or "anyio_backend" in pyfuncitem.funcargs:
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(test(**args))
    return True

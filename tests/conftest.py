"""Real Postgres for every test, through the same helper and pytest plugin users get
(:class:`agent_runtime.testing.TestDatabases`, ``agent_runtime.testing.pytest_plugin``): one private
server per session (per xdist worker), a migrated template built once, a fresh clone of it per
test, and its test clock (``advance_clock``)."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.local import embedded
from agent_runtime.testing import AdvanceClock, TestDatabases

RuntimeFactory = Callable[..., AgentRuntime]

pytest_plugins = ["agent_runtime.testing.pytest_plugin"]

# Whole suites that take seconds per test (agent processes, server restarts, the CLI as a
# subprocess, benchmarks, hypothesis): `pytest -m "not slow"` leaves them out.
_SLOW_PARTS = ("tests/failure/", "tests/test_cli.py", "tests/test_benchmarks_smoke.py",
               "tests/test_testing_plugin.py", "tests/test_examples.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.as_posix()
        if any(part in path for part in _SLOW_PARTS):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `--dist loadgroup` a worker's xdist_group tests carry their group in their node id
    (that is how xdist keeps a group on one worker). Where a pytest/xdist pair loses it
    (pytest-dev/pytest-xdist#1386) the groups would mix silently: say so in the warnings summary."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid]
    if lost:
        warnings.warn(pytest.PytestWarning(
            f"xdist_group is not honoured by this pytest and pytest-xdist (e.g. {lost[0]}): the timing-sensitive "
            "tests may run beside each other; see the pytest pin in pyproject.toml"), stacklevel=1)


@pytest.fixture(scope="session")
def test_databases(agent_runtime_databases: TestDatabases) -> TestDatabases:
    """The plugin's session databases (one private server per session, per xdist worker)."""
    return agent_runtime_databases


@pytest.fixture(scope="session")
def pg_server(test_databases: TestDatabases) -> embedded.LocalServer:
    """The session's private server (never the user's shared one)."""
    assert test_databases.server is not None
    return test_databases.server


@pytest.fixture
def db_url(agent_runtime_db_url: str) -> str:
    """The URL of a fresh, migrated database for this test (the plugin's)."""
    return agent_runtime_db_url


@pytest.fixture
def advance_clock(agent_runtime_advance_clock: AdvanceClock) -> AdvanceClock:
    """``await advance_clock(seconds)``: this test database's clock moves forward (the plugin's)."""
    return agent_runtime_advance_clock


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct (trusted) connection to the test's database."""
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def make_runtime(db_url: str) -> RuntimeFactory:
    """AgentRuntime on the test's database, with fast timers so tests stay short."""

    def make(name: str, **kwargs: Any) -> AgentRuntime:
        options: dict[str, Any] = {
            "url": db_url, "heartbeat_interval": 0.5, "janitor": False, "metrics_interval": 0.5,
            "poll_interval": 2.0, "shutdown_timeout": 3.0, "retry_base_delay": 0.05, "migrate": False,
            "pool_size": 4,
        }
        options.update(kwargs)
        return AgentRuntime(name, **options)

    return make


@pytest.fixture(scope="module")
def private_server() -> Iterator[TestDatabases]:
    """A server of the module's own (not the session's), for tests that need a freshly initialised
    cluster (no roles made by other tests) or reach it over TCP."""
    databases = TestDatabases()  # (its own scratch folder, one the server's user can reach)
    databases.start()
    try:
        yield databases
    finally:
        databases.stop()

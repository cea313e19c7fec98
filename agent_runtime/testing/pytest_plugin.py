"""pytest fixtures for testing agents against a real Postgres:
``pytest_plugins = ["agent_runtime.testing.pytest_plugin"]`` (needs pytest-asyncio).

- ``agent_runtime_databases``: the session's :class:`TestDatabases` (one private server).
- ``agent_runtime_db_url``: a fresh migrated database for one test, dropped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from .databases import TestDatabases


@pytest.fixture(scope="session")
def agent_runtime_databases() -> Iterator[TestDatabases]:
    databases = TestDatabases()
    databases.start()
    try:
        yield databases
    finally:
        databases.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def agent_runtime_db_url(agent_runtime_databases: TestDatabases) -> AsyncIterator[str]:
    url = await agent_runtime_databases.create()
    try:
        yield url
    finally:
        await agent_runtime_databases.drop(url)

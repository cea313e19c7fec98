"""Real Postgres for every test, through the same helper users get
(:class:`agent_runtime.testing.TestDatabases`): one private server per session, a migrated template
built once, and a fresh clone of it per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from agent_runtime import embedded
from agent_runtime.testing import TestDatabases


@pytest.fixture(scope="session")
def test_databases() -> Iterator[TestDatabases]:
    databases = TestDatabases()
    databases.start()
    try:
        yield databases
    finally:
        databases.stop()


@pytest.fixture(scope="session")
def pg_server(test_databases: TestDatabases) -> embedded.LocalServer:
    """The session's private server (never the user's shared one)."""
    assert test_databases.server is not None
    return test_databases.server


@pytest.fixture
async def db_url(test_databases: TestDatabases) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database for this test."""
    url = await test_databases.create()
    yield url
    await test_databases.drop(url)


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct (trusted) connection to the test's database."""
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()

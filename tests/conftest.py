"""Real Postgres for every test: one local server per session, a migrated template database built
once, and a fresh clone of it per test (CREATE DATABASE ... TEMPLATE), so tests are isolated and
NOTIFY behaves as in production (no transaction rollback tricks)."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from agent_runtime import embedded
from agent_runtime.migrations import migrate_url

_TEMPLATE = "ar_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[embedded.LocalServer]:
    """A private server for this test session (never the user's shared one)."""
    data_dir = Path(tempfile.mkdtemp(prefix="ar-test-")) / "pgdata"
    server = embedded.ensure_running(data_dir)
    try:
        yield server
    finally:
        embedded.stop(data_dir)


@pytest.fixture(scope="session")
async def template_db(pg_server: embedded.LocalServer) -> str:
    admin = await asyncpg.connect(pg_server.url("postgres"))
    try:
        await admin.execute(f'drop database if exists "{_TEMPLATE}"')
        await admin.execute(f'create database "{_TEMPLATE}"')
    finally:
        await admin.close()
    await migrate_url(pg_server.url(_TEMPLATE))
    return _TEMPLATE


@pytest.fixture
async def db_url(pg_server: embedded.LocalServer, template_db: str) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database for this test."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(pg_server.url("postgres"))
    try:
        await admin.execute(f'create database "{name}" template "{template_db}"')
    finally:
        await admin.close()
    yield pg_server.url(name)
    admin = await asyncpg.connect(pg_server.url("postgres"))
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct (trusted) connection to the test's database."""
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()

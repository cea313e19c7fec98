"""Fixtures of the failure suite: agent processes that are always killed at the end of the test
whatever happened (``make_runtime`` comes from the top-level conftest), and a durable private
server for crash tests with a fresh migrated database per test."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from agent_runtime.local import embedded
from agent_runtime.local.migrations import migrate_url
from tests.agent_processes import children
from tests.failure._failure_support import SCRIPT, Spawn


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """``await spawn(mode, *args)`` starts an agent process; every one is killed at teardown."""
    async with children(SCRIPT) as procs:
        yield procs.start


@pytest.fixture(scope="module")
def durable_server() -> Iterator[embedded.LocalServer]:
    """A private server that flushes its WAL at each durable commit (fsync on), as production does."""
    root = embedded.scratch_dir("ar-crash-")
    try:
        yield embedded.ensure_running(root / "pgdata", durable=True)
    finally:
        embedded.stop(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def crash_url(durable_server: embedded.LocalServer) -> AsyncIterator[str]:
    """A fresh migrated database on the durable server, whose WAL writer wakes only every 10 s: an
    async commit reaches the disk then (or when a durable commit flushes past it), so a write just
    committed without waiting for its flush is still unflushed when the test crashes the server."""
    name = f"crash_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(durable_server.url("postgres"))
    try:
        await admin.execute(f'create database "{name}"')
        await admin.execute("alter system set wal_writer_delay = '10s'")
        await admin.execute("select pg_reload_conf()")
    finally:
        await admin.close()
    await migrate_url(durable_server.url(name))
    yield durable_server.url(name)

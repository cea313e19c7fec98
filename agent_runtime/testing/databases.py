"""Fresh, migrated databases for tests: one private Postgres, a migrated template built once, and a
clone of it per test (``CREATE DATABASE ... TEMPLATE``). Cloning is fast and keeps tests isolated
while NOTIFY behaves as in production (no rolled-back transactions).

The template has a test clock: the database clock every decision reads (message TTLs, visibility
timeouts, presence expiry, lock leases, retry backoff) can be moved forward with
:meth:`TestDatabases.advance_clock` instead of sleeping out a TTL (``test_clock.sql``). Only a
trusted connection (the table's owner) can move it; a migrated database outside these tests has
no such clock.

For your own agents' tests::

    pytest_plugins = ["agent_runtime.testing.pytest_plugin"]

    async def test_my_agent(agent_runtime_db_url: str) -> None:
        async with AgentRuntime("mine", url=agent_runtime_db_url) as rt: ...
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from ..errors import InvalidInput
from ..local import embedded
from ..local.migrations import migrate_url
from ..transports.postgres import translate_errors

# What the pytest plugin's agent_runtime_advance_clock fixture gives: ``await advance(seconds)``.
AdvanceClock = Callable[[float], Awaitable[None]]


class TestDatabases:
    """A private embedded server (never the user's shared one) handing out migrated databases. It
    need not survive a power cut: it runs without fsync, synchronous commit and full-page writes."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, root: Path | None = None) -> None:
        self._owns_root = root is None
        self.root = root or embedded.scratch_dir("ar-test-")
        self.server: embedded.LocalServer | None = None
        self._template: str | None = None
        self._counter = itertools.count()

    def start(self) -> embedded.LocalServer:
        self.server = embedded.ensure_running(self.root / "pgdata", durable=False)
        return self.server

    def stop(self) -> None:
        embedded.stop(self.root / "pgdata")
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _url(self, database: str) -> str:
        if self.server is None:
            raise RuntimeError("call start() first")
        return self.server.url(database)

    async def _admin(self, sql: str) -> None:
        await self._run("postgres", sql)

    async def _run(self, database: str, sql: str) -> None:
        with translate_errors():
            conn = await asyncpg.connect(self._url(database))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

    async def template(self) -> str:
        """The migrated template's name (built on first use)."""
        if self._template is None:
            name = "ar_template"
            await self._admin(f'drop database if exists "{name}"')
            await self._admin(f'create database "{name}"')
            await migrate_url(self._url(name))
            await self._run(name, resources.files(__package__).joinpath("test_clock.sql").read_text())
            self._template = name
        return self._template

    async def create(self) -> str:
        """A fresh migrated database; returns its URL."""
        template = await self.template()
        name = f"t_{os.getpid()}_{next(self._counter)}"
        await self._admin(f'create database "{name}" template "{template}"')
        return self._url(name)

    async def drop(self, url: str) -> None:
        await self._admin(f'drop database if exists "{_database_of(url)}" with (force)')

    async def advance_clock(self, url: str, seconds: float) -> None:
        """Moves the database clock of the test database at ``url`` forward by ``seconds`` (its
        decisions see the time that much later from now on; it never goes back). Connects as this
        server's superuser, the only role that may: an agent's session cannot."""
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidInput(f"the test clock only moves forward: seconds must be >= 0, not {seconds!r}")
        with translate_errors():
            conn = await asyncpg.connect(self._url(_database_of(url)))
            try:
                await conn.execute("update agent_runtime_private.test_clock "
                                   "set advanced_by = advanced_by + make_interval(secs => $1)", seconds)
            finally:
                await conn.close()


def _database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")  # (the query names a socket folder, with slashes)

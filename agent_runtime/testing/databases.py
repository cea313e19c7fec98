"""Fresh, migrated databases for tests: one private Postgres, a migrated template built once, and a
clone of it per test (``CREATE DATABASE ... TEMPLATE``). Cloning is fast and keeps tests isolated
while NOTIFY behaves as in production (no rolled-back transactions).

For your own agents' tests::

    pytest_plugins = ["agent_runtime.testing.pytest_plugin"]

    async def test_my_agent(agent_runtime_db_url: str) -> None:
        async with AgentRuntime("mine", url=agent_runtime_db_url) as rt: ...
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from ..local import embedded
from ..local.migrations import migrate_url
from ..transports.postgres import translate_errors


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
        with translate_errors():
            conn = await asyncpg.connect(self._url("postgres"))
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
            self._template = name
        return self._template

    async def create(self) -> str:
        """A fresh migrated database; returns its URL."""
        template = await self.template()
        name = f"t_{os.getpid()}_{next(self._counter)}"
        await self._admin(f'create database "{name}" template "{template}"')
        return self._url(name)

    async def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")  # (the query names a socket folder, with slashes)
        await self._admin(f'drop database if exists "{name}" with (force)')

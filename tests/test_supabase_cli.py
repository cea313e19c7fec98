"""The real Supabase CLI (npm ``supabase@2.117.0``, pinned in tests/supabase_cli/) and the runtime on
one database, in either order: ``supabase db push`` then ``agent-runtime migrate`` / an agent
migrating on connect, and ``migrate`` then ``db push``. They share the CLI's ledger.

The CLI wants ``host:port``; the test server listens on a Unix socket only, so a small TCP relay on
127.0.0.1 forwards to it. These tests run on a private server of their own, made to look like
Supabase (the supabase_admin role, Supabase's default privileges), so its roles do not leak into the
session's server. Skipped only when node/npx is absent."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.local.migrations import bootstrap_sql, load_migrations, migrate, migrate_url, split_statements
from agent_runtime.testing import TestDatabases
from tests.catalog import SUPABASE_DEFAULT_PRIVILEGES, catalog, differences
from tests.npm_install import ensure_installed

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "tests" / "supabase_cli"
pytestmark = pytest.mark.skipif(shutil.which("npx") is None or shutil.which("npm") is None,
                                reason="node/npx is not installed: the Supabase CLI comes from npm")


def _cli_installed() -> bool:
    return (CLI_DIR / "node_modules" / ".bin" / "supabase").exists()


@pytest.fixture(scope="module")
def supabase_cli() -> None:
    """The pinned CLI, installed from the lock file if .ci/run has not done it already."""
    ensure_installed(CLI_DIR, CLI_DIR / "node_modules" / ".bin" / "supabase")
    assert _cli_installed()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def tcp_relay(server: TestDatabases) -> AsyncIterator[int]:
    """A port on 127.0.0.1 that forwards each connection to the server's Unix socket."""
    assert server.server is not None
    socket_path = str(server.server.socket_dir / f".s.PGSQL.{server.server.port}")

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(_relay(client_reader, server_writer), _relay(server_reader, client_writer))

    relay = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield relay.sockets[0].getsockname()[1]
    finally:
        relay.close()
        with suppress(Exception):
            await asyncio.wait_for(relay.wait_closed(), 2)


@asynccontextmanager
async def database(server: TestDatabases, name: str, *, supabase_like: bool) -> AsyncIterator[str]:
    """A new database; ``supabase_like``: with what Supabase provides before any migration (the roles
    and stand-ins, the supabase_admin role, Supabase's default privileges)."""
    assert server.server is not None
    admin = await asyncpg.connect(server.server.url("postgres"))
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.execute(f'create database "{name}" template template0')
    finally:
        await admin.close()
    url = server.server.url(name)
    if supabase_like:
        conn = await asyncpg.connect(url)
        try:
            # What Supabase provides: the bootstrap's roles and stand-ins (past its "on Supabase, do
            # nothing" guard, as supabase_admin may exist already on this server).
            await conn.execute(bootstrap_sql().replace("rolname = 'supabase_admin'", "rolname = ''"))
            await conn.execute("do $$ begin if not exists (select 1 from pg_roles where rolname = 'supabase_admin') "
                               "then create role supabase_admin nologin; end if; end $$")
            await conn.execute(SUPABASE_DEFAULT_PRIVILEGES)
        finally:
            await conn.close()
    yield url


async def db_push(project: Path, port: int, name: str, *extra: str, succeeds: bool = True) -> str:
    """``supabase db push --db-url ...`` in a project folder holding our supabase/ files; its output."""
    process = await asyncio.create_subprocess_exec(
        "npx", "--prefix", str(CLI_DIR), "supabase", "--workdir", str(project), "db", "push", "--yes",
        "--db-url", f"postgresql://postgres:postgres@127.0.0.1:{port}/{name}?sslmode=disable", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "DO_NOT_TRACK": "1", "SUPABASE_TELEMETRY_DISABLED": "1"})
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    text = output.decode(errors="replace")
    assert (process.returncode == 0) == succeeds, text
    return text


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A Supabase project folder with the repository's migrations and roles.sql (the CLI writes its
    own state into it, so not into the repository)."""
    (tmp_path / "supabase").mkdir()
    shutil.copytree(ROOT / "supabase" / "migrations", tmp_path / "supabase" / "migrations")
    shutil.copy(ROOT / "supabase" / "roles.sql", tmp_path / "supabase" / "roles.sql")
    return tmp_path


async def _ledger(url: str) -> list[tuple[str, str, list[str]]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("select version, name, statements from supabase_migrations.schema_migrations"
                                " order by version")
        return [(r["version"], r["name"], list(r["statements"])) for r in rows]
    finally:
        await conn.close()


async def _expected_ledger() -> list[tuple[str, str, list[str]]]:
    return [(m.version, m.name, split_statements(m.sql)) for m in load_migrations()]


async def _agent_works(url: str) -> None:
    """An agent connecting with migrate-on-connect registers and talks."""
    async with AgentRuntime("cli-order", url=url, janitor=False, heartbeat_interval=0.5, pool_size=2) as rt:
        assert rt.agent_id in {a.id for a in await rt.agents()}


async def _catalog(url: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return await catalog(conn)
    finally:
        await conn.close()


@pytest.mark.usefixtures("supabase_cli")
async def test_db_push_then_the_runtime(private_server: TestDatabases, project: Path) -> None:
    """After `supabase db push` on a Supabase database, `migrate` has nothing to do, an agent
    connects, and the schema is the one the runtime builds."""
    async with tcp_relay(private_server) as port, \
            database(private_server, "pushed_first", supabase_like=True) as url, \
            database(private_server, "runtime_only", supabase_like=True) as reference:
        output = await db_push(project, port, "pushed_first")
        assert "20261202000000_least_privilege.sql" in output
        assert await migrate_url(url) == []
        await _agent_works(url)
        assert await _ledger(url) == await _expected_ledger()  # the runtime's split is the CLI's
        await migrate_url(reference)
        assert differences(await _catalog(url), await _catalog(reference)) == []


@pytest.mark.usefixtures("supabase_cli")
async def test_the_runtime_then_db_push(private_server: TestDatabases, project: Path) -> None:
    """After `agent-runtime migrate` on a Supabase database, `supabase db push` finds it up to date."""
    async with tcp_relay(private_server) as port, \
            database(private_server, "runtime_first", supabase_like=True) as url:
        assert await migrate_url(url) == [m.version for m in load_migrations()]
        output = await db_push(project, port, "runtime_first")
        assert "up to date" in output, output
        assert await _ledger(url) == await _expected_ledger()
        await _agent_works(url)


@pytest.mark.usefixtures("supabase_cli")
async def test_db_push_on_plain_postgres(private_server: TestDatabases, project: Path) -> None:
    """On a plain Postgres, `db push --include-roles` applies supabase/roles.sql (the bootstrap) and the
    migrations; an agent migrating on connect then follows the CLI's ledger."""
    async with tcp_relay(private_server) as port, \
            database(private_server, "plain_pushed", supabase_like=False) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("drop role if exists supabase_admin")  # (made by the other tests)
        finally:
            await conn.close()
        await db_push(project, port, "plain_pushed", "--include-roles")
        await _agent_works(url)
        conn = await asyncpg.connect(url)
        try:
            assert await migrate(conn) == []
            assert await conn.fetchval("select to_regclass('agent_runtime_private.schema_migrations')") is None
        finally:
            await conn.close()


@pytest.mark.usefixtures("supabase_cli")
async def test_the_runtime_then_db_push_on_plain_postgres(private_server: TestDatabases, project: Path) -> None:
    """On a plain Postgres the runtime keeps its own ledger (with checksums) and records every version
    in the CLI's ledger too, so `db push` after it finds the database up to date."""
    async with tcp_relay(private_server) as port, \
            database(private_server, "plain_runtime_first", supabase_like=False) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("drop role if exists supabase_admin")  # (made by the other tests)
        finally:
            await conn.close()
        assert await migrate_url(url) == [m.version for m in load_migrations()]
        assert "up to date" in await db_push(project, port, "plain_runtime_first")
        assert await migrate_url(url) == []
        await _agent_works(url)

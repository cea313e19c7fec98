"""One migration ledger: the runtime's own (with a checksum per version) on plain Postgres, the
Supabase CLI's where it exists; databases built by the four pre-squash files upgraded in place or
refused; never half-migrated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from agent_runtime.errors import MigrationError
from agent_runtime.local.migrations import (
    LEGACY_VERSIONS,
    Migration,
    bootstrap_sql,
    load_migrations,
    migrate,
    split_statements,
)
from agent_runtime.testing import TestDatabases
from tests.catalog import catalog, differences, empty_database

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_migrations"
# The ledger the migrator kept before checksums (what every embedded database made so far has).
OLD_LEDGER = """
    create schema if not exists agent_runtime_private;
    create table if not exists agent_runtime_private.schema_migrations (
      version text primary key, name text not null, applied_at timestamptz not null default now())
"""


async def _ledger(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch("select version, name, checksum from agent_runtime_private.schema_migrations order by 1")
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


async def _build_legacy(conn: asyncpg.Connection, files: list[Path]) -> None:
    """As the old migrator did it: bootstrap, its ledger, each file and its row (no checksum)."""
    await conn.execute(bootstrap_sql())
    await conn.execute(OLD_LEDGER)
    for path in files:
        await conn.execute(path.read_text())
        version, _, name = path.stem.partition("_")
        await conn.execute("insert into agent_runtime_private.schema_migrations (version, name) values ($1, $2)",
                           version, name)


async def test_runtime_ledger_records_a_checksum_per_version(conn: asyncpg.Connection) -> None:
    """On plain Postgres each applied file is recorded with the sha256 of its text, and mirrored into
    the Supabase CLI's ledger (so a later `supabase db push` finds it); a second run is a no-op."""
    expected = [(m.version, m.name, m.checksum) for m in load_migrations()]
    assert await _ledger(conn) == expected
    assert await migrate(conn) == []
    mirrored = await conn.fetch("select version, statements from supabase_migrations.schema_migrations order by 1")
    assert [(r["version"], r["statements"]) for r in mirrored] == [
        (m.version, split_statements(m.sql)) for m in load_migrations()]


async def test_an_edited_applied_migration_is_refused(conn: asyncpg.Connection) -> None:
    """A migration whose text changed after it was applied is refused, naming its file; nothing runs."""
    migrations = load_migrations()
    edited = Migration(migrations[0].version, migrations[0].name, migrations[0].sql + "\n-- edited\n")
    extra = Migration("29990101000000", "later", "create table public.later_probe (id int)")
    before = await catalog(conn)
    with pytest.raises(MigrationError) as info:
        await migrate(conn, [edited, *migrations[1:], extra])
    assert migrations[0].filename in str(info.value)
    assert "new one" in str(info.value)  # the hint: put the change in a new migration
    assert differences(before, await catalog(conn)) == []
    assert await conn.fetchval("select to_regclass('public.later_probe')") is None


async def test_a_failing_migration_changes_nothing(test_databases: TestDatabases) -> None:
    """Bootstrap, ledger and every migration run in one transaction: a failure in the last leaves an
    empty database empty."""
    async with empty_database(test_databases) as url:
        conn = await asyncpg.connect(url)
        try:
            broken = Migration("29990101000000", "broken", "select 1/0")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await migrate(conn, [*load_migrations(), broken])
            assert await conn.fetchval(
                "select count(*) from pg_namespace where nspname in ('agent_runtime_private', 'auth', 'realtime')") == 0
            assert await conn.fetchval("select to_regclass('public.distributed_agents')") is None
        finally:
            await conn.close()


async def test_concurrent_migrations_apply_once(test_databases: TestDatabases) -> None:
    """Several agents starting at once on an empty database: one applies, the others wait and find it done."""
    async with empty_database(test_databases) as url:
        conns = await asyncio.gather(*(asyncpg.connect(url) for _ in range(3)))
        try:
            results = await asyncio.gather(*(migrate(c) for c in conns))
        finally:
            await asyncio.gather(*(c.close() for c in conns))
    assert sorted(map(len, results)) == [0, 0, len(load_migrations())]


async def test_legacy_database_is_upgraded_in_place(test_databases: TestDatabases) -> None:
    """A database built by the four pre-squash files (old ledger, no checksums) is recognised: the
    squash counts as applied, the later migrations are applied, and its catalog equals a fresh one's."""
    files = sorted(LEGACY.glob("*.sql"))
    assert {p.stem.partition("_")[0] for p in files} == LEGACY_VERSIONS
    async with empty_database(test_databases) as legacy, empty_database(test_databases) as fresh:
        conn = await asyncpg.connect(legacy)
        try:
            await _build_legacy(conn, files)
            await conn.execute("select public.register_agent(p_agent_id => 'kept', p_name => 'kept')")
            applied = await migrate(conn)
            assert applied == [m.version for m in load_migrations()[1:]]
            assert await _ledger(conn) == [(m.version, m.name, m.checksum) for m in load_migrations()]
            assert await conn.fetchval("select count(*) from public.distributed_agents where id = 'kept'") == 1
            upgraded = await catalog(conn)
            assert await migrate(conn) == []
        finally:
            await conn.close()
        conn = await asyncpg.connect(fresh)
        try:
            await migrate(conn)
            assert differences(upgraded, await catalog(conn)) == []
        finally:
            await conn.close()


async def test_legacy_database_with_a_later_migration_is_upgraded_in_place(test_databases: TestDatabases) -> None:
    """An old ledger with the four versions and a version of a migration that still exists (one that
    landed before the squash) keeps that one as applied, now with its checksum."""
    later = Migration("20261130000000", "landed_before_the_squash",
                      "create table public.before_squash_probe (id int)")
    migrations = [*load_migrations(), later]
    async with empty_database(test_databases) as url:
        conn = await asyncpg.connect(url)
        try:
            await _build_legacy(conn, sorted(LEGACY.glob("*.sql")))
            await conn.execute(later.sql)
            await conn.execute("insert into agent_runtime_private.schema_migrations (version, name) values ($1, $2)",
                               later.version, later.name)
            assert await migrate(conn, migrations) == [m.version for m in load_migrations()[1:]]
            assert [v for v, _, _ in await _ledger(conn)] == sorted(m.version for m in migrations)
            assert (later.version, later.name, later.checksum) in await _ledger(conn)
        finally:
            await conn.close()


async def test_legacy_database_in_another_state_is_refused(test_databases: TestDatabases) -> None:
    """An old ledger with only some of the four versions is refused, with the command that rebuilds
    the database, and nothing changes."""
    async with empty_database(test_databases) as url:
        conn = await asyncpg.connect(url)
        try:
            await _build_legacy(conn, sorted(LEGACY.glob("*.sql"))[:2])
            before = await catalog(conn)
            with pytest.raises(MigrationError) as info:
                await migrate(conn)
            assert "dropdb" in str(info.value) and "agent-runtime migrate" in str(info.value)
            assert differences(before, await catalog(conn)) == []
            assert await conn.fetchval("select count(*) from agent_runtime_private.schema_migrations") == 2
        finally:
            await conn.close()


async def test_supabase_cli_ledger_is_used_where_it_exists(test_databases: TestDatabases) -> None:
    """Where supabase_migrations.schema_migrations exists, versions there count as applied and the
    runtime records its own there (version, name, statements), keeping no ledger of its own."""
    migrations = load_migrations()
    async with empty_database(test_databases) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("""
                create schema supabase_migrations;
                create table supabase_migrations.schema_migrations (version text not null primary key);
                alter table supabase_migrations.schema_migrations add column if not exists statements text[];
                alter table supabase_migrations.schema_migrations add column if not exists name text;
            """)
            # As if `supabase db push` had applied the first one (and a migration of the user's own).
            await conn.execute(bootstrap_sql())
            await conn.execute(migrations[0].sql)
            await conn.execute("insert into supabase_migrations.schema_migrations values ($1, $2, $3), ($4, $5, $6)",
                               migrations[0].version, split_statements(migrations[0].sql), migrations[0].name,
                               "20200101000000", ["select 1"], "users_own")
            assert await migrate(conn) == [m.version for m in migrations[1:]]
            rows = await conn.fetch("select version, name, statements from supabase_migrations.schema_migrations"
                                    " order by version")
            assert [(r["version"], r["name"]) for r in rows] == [
                ("20200101000000", "users_own"), *((m.version, m.name) for m in migrations)]
            assert rows[-1]["statements"] == split_statements(migrations[-1].sql)
            assert await conn.fetchval("select to_regclass('agent_runtime_private.schema_migrations')") is None
            assert await migrate(conn) == []
        finally:
            await conn.close()


async def test_the_runtime_ledger_is_carried_into_the_cli_ledger(conn: asyncpg.Connection) -> None:
    """A database the runtime migrated with its own ledger only (as earlier versions did) on which
    the CLI's ledger then appeared empty: the runtime applies nothing and records its versions in
    the CLI's ledger, so the next `db push` finds them."""
    await conn.execute("""
        drop schema supabase_migrations cascade;
        create schema supabase_migrations;
        create table supabase_migrations.schema_migrations (version text not null primary key);
    """)
    assert await migrate(conn) == []
    rows = await conn.fetch("select version, name, statements from supabase_migrations.schema_migrations order by 1")
    assert [(r["version"], r["name"], r["statements"]) for r in rows] == [
        (m.version, m.name, split_statements(m.sql)) for m in load_migrations()]


async def test_on_supabase_the_cli_ledger_is_created(test_databases: TestDatabases) -> None:
    """On a Supabase database (it has the supabase_admin role) the runtime creates the CLI's ledger
    with the CLI's own DDL and records there; it never runs the bootstrap."""
    async with empty_database(test_databases) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(bootstrap_sql())  # what Supabase itself provides
            tr = conn.transaction()  # (roles are server-wide: the role is rolled back after)
            await tr.start()
            try:
                await conn.execute("create role supabase_admin nologin")
                assert await migrate(conn) == [m.version for m in load_migrations()]
                columns = await conn.fetch(
                    "select column_name, data_type, is_nullable from information_schema.columns"
                    " where table_schema = 'supabase_migrations' and table_name = 'schema_migrations'"
                    " order by ordinal_position")
                assert [tuple(c.values()) for c in columns] == [
                    ("version", "text", "NO"), ("statements", "ARRAY", "YES"), ("name", "text", "YES")]
                assert await conn.fetchval("select count(*) from supabase_migrations.schema_migrations") == len(
                    load_migrations())
                assert await conn.fetchval("select to_regclass('agent_runtime_private.schema_migrations')") is None
            finally:
                await tr.rollback()
        finally:
            await conn.close()


def test_statements_are_split_as_the_cli_splits_them() -> None:
    """Dollar-quoted bodies, quotes, comments and parentheses keep their semicolons; comments stay."""
    sql = ("-- lead\ncreate function f() returns int language sql as $$ select 1; $$;\n"
           "select 'a;b', \"x;y\" /* c; /* nested; */ */;\ndo $t$ begin perform 1; end $t$;\n"
           "create rule r as on insert to t do also (select 1; select 2);\n\n")
    assert split_statements(sql) == [
        "-- lead\ncreate function f() returns int language sql as $$ select 1; $$",
        "select 'a;b', \"x;y\" /* c; /* nested; */ */",
        "do $t$ begin perform 1; end $t$",
        "create rule r as on insert to t do also (select 1; select 2)",
    ]

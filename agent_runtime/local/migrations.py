"""Applies the bootstrap (plain Postgres only) and the schema migrations, once each, in order.

The migrations are the files of ``supabase/migrations`` (shipped in the wheel as
``agent_runtime/local/_migrations``), so ``supabase db push`` and ``agent-runtime migrate`` apply the same
SQL, and they keep one ledger:

* where ``supabase_migrations.schema_migrations`` exists (the Supabase CLI's), or on a Supabase
  database (then it is created with the CLI's own DDL), versions recorded there count as applied
  and the runtime records its own there in the CLI's format (version, name, statements), so that
  ``supabase db push`` and the runtime can follow each other in either order;
* elsewhere the runtime's ``agent_runtime_private.schema_migrations`` records each version with the
  sha256 of its file, and a file changed after it was applied is refused (:class:`MigrationError`
  naming the file). Should the CLI's ledger appear later (``db push`` on a plain Postgres the
  runtime migrated), the runtime's versions are carried into it.

An agent connecting to an up-to-date database only reads the ledger (no DDL, no lock).

A database built by the four migration files that came before the squash (its ledger has those four
versions and no checksums; its catalog equals what the squashed first migration builds) is brought
to the new ledger in place; a runtime ledger in any other unrecognised state is refused with the
command that rebuilds it. Everything happens in one transaction under an advisory lock: concurrent
runs (several agents starting at once) wait for each other, and a failure changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from ..errors import MigrationError
from ..transports.postgres import describe_target, split_connect_timeout, translate_errors

__all__ = ["Migration", "bootstrap_sql", "load_migrations", "migrate", "migrate_url", "migrations_dir",
           "split_statements"]

_LOCK_ID = 0x4147_454E_5452_544D  # arbitrary, fixed: "AGENTRTM"
_LOCK_KEY = _LOCK_ID - (1 << 64) if _LOCK_ID >= 1 << 63 else _LOCK_ID

# The versions of the four files squashed into the first migration (tests/fixtures/legacy_migrations/).
LEGACY_VERSIONS = frozenset({"20261125000000", "20261201000000", "20261201000100", "20261201000200"})
SQUASHED_VERSION = "20261125000000"

_SOURCE_TREE = Path(__file__).resolve().parents[2] / "supabase"


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The packaged migrations, or the source tree's ``supabase/migrations`` in a checkout."""
    packaged = Path(str(resources.files("agent_runtime.local"))) / "_migrations"
    if packaged.is_dir():
        return packaged
    return _SOURCE_TREE / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        version, _, name = path.stem.partition("_")
        found.append(Migration(version, name, path.read_text()))
    return found


def bootstrap_sql() -> str:
    """The plain-Postgres bootstrap: ``supabase/roles.sql`` (packaged as ``_sql/bootstrap.sql``)."""
    packaged = Path(str(resources.files("agent_runtime.local"))) / "_sql" / "bootstrap.sql"
    return (packaged if packaged.is_file() else _SOURCE_TREE / "roles.sql").read_text()


def split_statements(sql: str) -> list[str]:
    """The statements of a migration as the Supabase CLI records them: split at each ``;`` outside
    quotes, comments, dollar-quoted bodies and parentheses, without the ``;``, trimmed, comments kept."""
    statements: list[str] = []
    start = i = depth = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # a doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            i = end + 1
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            level, i = 1, i + 2
            while i < n and level:
                if sql.startswith("/*", i):
                    level, i = level + 1, i + 2
                elif sql.startswith("*/", i):
                    level, i = level - 1, i + 2
                else:
                    i += 1
        elif c == "$":
            close = sql.find("$", i + 1)
            tag = sql[i:close + 1] if close > 0 else ""
            if tag and all(ch.isalnum() or ch == "_" for ch in tag[1:-1]) and not tag[1:2].isdigit():
                end = sql.find(tag, close + 1)
                i = n if end < 0 else end + len(tag)
            else:
                i += 1
        elif c == "(":
            depth, i = depth + 1, i + 1
        elif c == ")":
            depth, i = max(depth - 1, 0), i + 1
        elif c == ";" and depth == 0:
            statement = sql[start:i].strip()
            if statement:
                statements.append(statement)
            i += 1
            start = i
        else:
            i += 1
    tail = sql[start:].strip()
    if tail:
        statements.append(tail)
    return statements


async def _is_supabase(conn: asyncpg.Connection) -> bool:
    # A Supabase database has the supabase_admin role; the bootstrap is never needed there.
    return bool(await conn.fetchval("select exists (select 1 from pg_roles where rolname = 'supabase_admin')"))


async def _rebuild_hint(conn: asyncpg.Connection) -> str:
    name = await conn.fetchval("select current_database()")
    return (f"rebuild it: `dropdb {name} && createdb {name} && agent-runtime migrate --url ...` (the embedded "
            "local database: `agent-runtime local stop`, delete its data folder, then `agent-runtime migrate`)")


class _SupabaseLedger:
    """The Supabase CLI's ``supabase_migrations.schema_migrations`` (version, statements, name)."""

    async def open(self, conn: asyncpg.Connection) -> None:
        # The CLI's own DDL (pkg/migration/history.go), so either may create it first.
        await conn.execute("""
            create schema if not exists supabase_migrations;
            create table if not exists supabase_migrations.schema_migrations (version text not null primary key);
            alter table supabase_migrations.schema_migrations add column if not exists statements text[];
            alter table supabase_migrations.schema_migrations add column if not exists name text;
        """)

    async def adopt_runtime_ledger(self, conn: asyncpg.Connection, migrations: list[Migration]) -> None:
        """A database the runtime migrated with its own ledger before the CLI's appeared (a plain
        Postgres that then met `supabase db push`): its versions are applied, so record them here."""
        if not await conn.fetchval("select to_regclass('agent_runtime_private.schema_migrations') is not null"):
            return
        runtime = _RuntimeLedger(migrations)
        await runtime.open(conn)  # (brings a pre-checksum ledger up to date, or refuses it)
        done = await self.applied(conn)
        for version in await runtime.applied(conn):
            migration = next((m for m in migrations if m.version == version), None)
            if migration is not None and version not in done:
                await self.record(conn, migration)

    async def applied(self, conn: asyncpg.Connection) -> dict[str, str | None]:
        rows = await conn.fetch("select version from supabase_migrations.schema_migrations")
        return dict.fromkeys((r["version"] for r in rows), None)  # the CLI keeps no checksum

    async def record(self, conn: asyncpg.Connection, migration: Migration) -> None:
        await conn.execute(
            "insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)",
            migration.version, migration.name, split_statements(migration.sql))


class _RuntimeLedger:
    """``agent_runtime_private.schema_migrations``: version, name, sha256 of the file, when."""

    def __init__(self, migrations: list[Migration]) -> None:
        self.migrations = migrations

    async def open(self, conn: asyncpg.Connection) -> None:
        exists = await conn.fetchval("select to_regclass('agent_runtime_private.schema_migrations') is not null")
        if exists and not await conn.fetchval(
                "select exists (select 1 from pg_attribute where attrelid = "
                "'agent_runtime_private.schema_migrations'::regclass and attname = 'checksum' and not attisdropped)"):
            await self._adopt_legacy(conn)
        await conn.execute("""
            create schema if not exists agent_runtime_private;
            revoke all on schema agent_runtime_private from public;
            create table if not exists agent_runtime_private.schema_migrations (
              version text primary key, name text not null, checksum text not null,
              applied_at timestamptz not null default now())
        """)

    async def _adopt_legacy(self, conn: asyncpg.Connection) -> None:
        """A ledger of the migrator before checksums: accepted only when it holds the four squashed
        versions (the squash then counts as applied), besides only versions of today's migrations
        (each then recorded with its file's checksum); refused in any other state."""
        rows = await conn.fetch("select version from agent_runtime_private.schema_migrations")
        versions = {r["version"] for r in rows}
        current = {m.version: m for m in self.migrations}
        if SQUASHED_VERSION not in current or not LEGACY_VERSIONS <= versions or not (
                versions - LEGACY_VERSIONS <= current.keys()):
            raise MigrationError(
                "this database was migrated by an earlier agent_runtime and is in a state this one cannot "
                f"upgrade in place (applied: {', '.join(sorted(versions)) or 'none'})",
                hint=await _rebuild_hint(conn))
        await conn.execute("alter table agent_runtime_private.schema_migrations add column checksum text")
        await conn.execute("delete from agent_runtime_private.schema_migrations where version = any($1::text[])",
                           sorted(LEGACY_VERSIONS - {SQUASHED_VERSION}))
        for version in (versions - LEGACY_VERSIONS) | {SQUASHED_VERSION}:
            await conn.execute(
                "update agent_runtime_private.schema_migrations set name = $2, checksum = $3 where version = $1",
                version, current[version].name, current[version].checksum)
        await conn.execute("alter table agent_runtime_private.schema_migrations alter column checksum set not null")

    async def applied(self, conn: asyncpg.Connection) -> dict[str, str | None]:
        rows = await conn.fetch("select version, checksum from agent_runtime_private.schema_migrations")
        return {r["version"]: r["checksum"] for r in rows}

    async def record(self, conn: asyncpg.Connection, migration: Migration) -> None:
        await conn.execute(
            "insert into agent_runtime_private.schema_migrations (version, name, checksum) values ($1, $2, $3)",
            migration.version, migration.name, migration.checksum)


class _MirroredLedger(_RuntimeLedger):
    """Plain Postgres: the runtime's ledger (with checksums) is the authority, and every version is
    also recorded in the CLI's ledger, so a later `supabase db push` finds the database up to date.
    Versions only the CLI recorded (a `db push` of a newer migration) count as applied too."""

    def __init__(self, migrations: list[Migration]) -> None:
        super().__init__(migrations)
        self.cli = _SupabaseLedger()

    async def open(self, conn: asyncpg.Connection) -> None:
        await super().open(conn)
        await self.cli.open(conn)
        await self.cli.adopt_runtime_ledger(conn, self.migrations)

    async def applied(self, conn: asyncpg.Connection) -> dict[str, str | None]:
        return {**await self.cli.applied(conn), **await super().applied(conn)}

    async def record(self, conn: asyncpg.Connection, migration: Migration) -> None:
        await super().record(conn, migration)
        await self.cli.record(conn, migration)


async def _ledger(conn: asyncpg.Connection, supabase: bool,
                  migrations: list[Migration]) -> _SupabaseLedger | _RuntimeLedger:
    if supabase:
        return _SupabaseLedger()
    found = await conn.fetchrow("""
        select to_regclass('supabase_migrations.schema_migrations') is not null as cli,
               to_regclass('agent_runtime_private.schema_migrations') is not null as runtime""")
    if found["cli"] and not found["runtime"]:
        return _SupabaseLedger()  # `supabase db push` built it: follow the CLI's ledger
    return _MirroredLedger(migrations)


async def _up_to_date(conn: asyncpg.Connection, migrations: list[Migration]) -> bool:
    """Read-only: every migration is recorded (with its checksum, in the runtime's ledger, and then
    in the CLI's too). The common case of an agent connecting, answered without DDL, lock or bootstrap."""
    ledgers = await conn.fetchrow("""
        select to_regclass('supabase_migrations.schema_migrations') is not null as cli,
               exists (select 1 from pg_attribute where attname = 'checksum' and not attisdropped
                       and attrelid = to_regclass('agent_runtime_private.schema_migrations')) as runtime""")
    if not ledgers["cli"]:
        return False  # (a runtime ledger alone is mirrored into the CLI's by migrate)
    cli = {r["version"] for r in await conn.fetch("select version from supabase_migrations.schema_migrations")}
    if not all(m.version in cli for m in migrations):
        return False
    if ledgers["runtime"]:
        rows = await conn.fetch("select version, checksum from agent_runtime_private.schema_migrations")
        recorded = {r["version"]: r["checksum"] for r in rows}
        return all(recorded.get(m.version, m.checksum) == m.checksum for m in migrations)
    return True


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; return the versions applied by this call (empty when up to date).

    Raises :class:`MigrationError` (and changes nothing) when an applied migration's file changed or
    the database's ledger is in a state it does not recognise."""
    migrations = load_migrations() if migrations is None else migrations
    if await _up_to_date(conn, migrations):
        return []
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        supabase = await _is_supabase(conn)
        if not supabase:
            await conn.execute(bootstrap_sql())
        ledger = await _ledger(conn, supabase, migrations)
        await ledger.open(conn)
        if isinstance(ledger, _SupabaseLedger):
            await ledger.adopt_runtime_ledger(conn, migrations)
        applied = await ledger.applied(conn)
        for migration in migrations:
            if migration.version in applied:
                recorded = applied[migration.version]
                if recorded is not None and recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.filename} was changed after it was applied to this database",
                        hint="never edit an applied migration: restore the file and put the change in a new one")
                continue
            await conn.execute(migration.sql)
            await ledger.record(conn, migration)
            applied_now.append(migration.version)
    return applied_now


async def migrate_url(url: str) -> list[str]:
    """Connect, migrate, disconnect; failures come out as the runtime's own errors."""
    connect_url, timeout = split_connect_timeout(url)
    with translate_errors(describe_target(url)):
        conn = await asyncpg.connect(connect_url, timeout=timeout)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

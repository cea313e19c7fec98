"""Applies the bootstrap (plain Postgres only) and the schema migrations, once each, in order.

The migrations are the files of ``supabase/migrations`` (shipped in the wheel as
``agent_runtime/_migrations``), so ``supabase db push`` and ``agent-runtime migrate`` apply the
same SQL. Applied versions are recorded in ``agent_runtime_private.schema_migrations``; an advisory
lock makes concurrent runs (several agents starting at once) safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from .transports.postgres import describe_target, translate_errors

__all__ = ["Migration", "bootstrap_sql", "load_migrations", "migrate", "migrate_url", "migrations_dir"]

_LOCK_ID = 0x4147_454E_5452_544D  # arbitrary, fixed: "AGENTRTM"
_LOCK_KEY = _LOCK_ID - (1 << 64) if _LOCK_ID >= 1 << 63 else _LOCK_ID


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str


def migrations_dir() -> Path:
    """The packaged migrations, or the source tree's ``supabase/migrations`` in a checkout."""
    packaged = Path(str(resources.files("agent_runtime"))) / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "supabase" / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        version, _, name = path.stem.partition("_")
        found.append(Migration(version, name, path.read_text()))
    return found


def bootstrap_sql() -> str:
    return (resources.files("agent_runtime") / "_sql" / "bootstrap.sql").read_text()


async def _is_supabase(conn: asyncpg.Connection) -> bool:
    # A Supabase database has the supabase_admin role; the bootstrap is never needed there.
    return bool(await conn.fetchval("select exists (select 1 from pg_roles where rolname = 'supabase_admin')"))


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the versions applied by this call (empty when up to date)."""
    applied_now: list[str] = []
    await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
    try:
        if not await _is_supabase(conn):
            await conn.execute(bootstrap_sql())
        await conn.execute(
            """
            create schema if not exists agent_runtime_private;
            create table if not exists agent_runtime_private.schema_migrations (
              version text primary key, name text not null, applied_at timestamptz not null default now())
            """
        )
        done = {r["version"] for r in await conn.fetch("select version from agent_runtime_private.schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "insert into agent_runtime_private.schema_migrations (version, name) values ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied_now.append(migration.version)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def migrate_url(url: str) -> list[str]:
    """Connect, migrate, disconnect; failures come out as the runtime's own errors."""
    with translate_errors(describe_target(url)):
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

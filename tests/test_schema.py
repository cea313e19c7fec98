"""The declared schema (supabase/schemas/) and the migrations (supabase/migrations/) build the same
catalog, and the comparison notices when either side changes alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from agent_runtime.local.migrations import bootstrap_sql, migrate
from agent_runtime.testing import TestDatabases
from tests.catalog import catalog, differences, empty_database, with_supabase_default_privileges

SCHEMAS = Path(__file__).resolve().parents[1] / "supabase" / "schemas"

Catalog = dict[str, list[tuple[object, ...]]]


def schema_files() -> list[Path]:
    return sorted(SCHEMAS.glob("*.sql"))


async def built_from_schema(url: str, edit: Callable[[str, str], str] | None = None) -> Catalog:
    """Bootstrap, then every schema file in order (``edit(file name, text)`` may alter one)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(bootstrap_sql())
        for path in schema_files():
            text = path.read_text()
            await conn.execute(edit(path.name, text) if edit else text)
        return await catalog(conn)
    finally:
        await conn.close()


async def built_from_migrations(url: str, extra_sql: str | None = None) -> Catalog:
    """What ``agent-runtime migrate`` builds (then ``extra_sql``, standing for an added migration)."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        if extra_sql:
            await conn.execute(extra_sql)
        return await catalog(conn)
    finally:
        await conn.close()


def test_schema_files_are_ordered_and_define_each_function_once() -> None:
    """One file per concern, numbered; no function is defined in two places."""
    import re

    names = [p.name for p in schema_files()]
    assert names and all(re.match(r"^\d{2}_[a-z_]+\.sql$", n) for n in names), names
    seen: dict[str, str] = {}
    for path in schema_files():
        for fn in re.findall(r"create (?:or replace )?function ([\w.]+)\(", path.read_text()):
            assert fn not in seen, f"{fn} is defined in {seen[fn]} and {path.name}"
            seen[fn] = path.name
    assert len(seen) > 40


@pytest.mark.parametrize("defaults", [False, True], ids=["plain", "supabase default privileges"])
async def test_migrations_build_the_declared_schema(test_databases: TestDatabases, defaults: bool) -> None:
    """A fresh database migrated and one built from supabase/schemas/ have equal catalogs (also when
    both start with Supabase's default privileges)."""
    async with empty_database(test_databases) as migrated, empty_database(test_databases) as declared:
        if defaults:
            await with_supabase_default_privileges(migrated)
            await with_supabase_default_privileges(declared)
        from_migrations = await built_from_migrations(migrated)
        from_schema = await built_from_schema(declared)
    assert differences(from_migrations, from_schema) == []
    assert len(from_schema["functions"]) > 40 and len(from_schema["policies"]) >= 10


def _alter_body(name: str, text: str) -> str:
    """A line added inside list_locks' body (the smallest edit to a function's text)."""
    if name.endswith("_locks.sql"):
        start = text.index("as $$", text.index("function public.list_locks("))
        return text[:start] + "as $$\n  -- edited" + text[start + len("as $$"):]
    return text


def _drop_a_grant(name: str, text: str) -> str:
    if name.endswith("_security.sql"):
        return text + "\nrevoke execute on function public.list_locks() from authenticated;\n"
    return text


@pytest.mark.parametrize(("edit", "expected"), [
    (_alter_body, "list_locks()"),
    (_drop_a_grant, "authenticated:EXECUTE"),
], ids=["function body altered", "grant removed"])
async def test_comparison_fails_when_the_schema_alone_changes(
        test_databases: TestDatabases, edit: Callable[[str, str], str], expected: str) -> None:
    """A declared schema edited without a migration no longer compares equal, and the report names it."""
    async with empty_database(test_databases) as migrated, empty_database(test_databases) as declared:
        from_migrations = await built_from_migrations(migrated)
        from_schema = await built_from_schema(declared, edit)
    found = differences(from_migrations, from_schema)
    assert found and any(expected in line for line in found), found


async def test_comparison_fails_when_the_migrations_alone_change(test_databases: TestDatabases) -> None:
    """A migration added without its schema change no longer compares equal."""
    async with empty_database(test_databases) as migrated, empty_database(test_databases) as declared:
        from_migrations = await built_from_migrations(
            migrated, "create index distributed_agents_kind_idx on public.distributed_agents (kind)")
        from_schema = await built_from_schema(declared)
    found = differences(from_migrations, from_schema)
    assert any("distributed_agents_kind_idx" in line for line in found), found

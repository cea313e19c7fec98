"""The schema's catalog as one comparable value, and empty databases to build it in.

Two databases built differently (the migrations, the declared schema, a legacy upgrade) hold the
same schema when their :func:`catalog` values are equal. ACLs are compared as sets of
(grantee, privilege) so the order grants were made in does not matter; everything else is compared
as the server prints it back (``pg_get_functiondef``, ``pg_get_indexdef``...).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from agent_runtime.testing import TestDatabases

SCHEMAS = ("public", "agent_runtime_private")
# The runtime's own ledger is bookkeeping of how a database was built, not part of the schema.
LEDGER = "agent_runtime_private.schema_migrations"

_ACL = """
  array(select coalesce(r.rolname, 'PUBLIC') || ':' || a.privilege_type || case when a.is_grantable then '*' else '' end
        from aclexplode({acl}) a left join pg_roles r on r.oid = a.grantee order by 1)
"""

QUERIES: dict[str, str] = {
    "schemas": f"""
        select n.nspname, {_ACL.format(acl="n.nspacl")} as acl
        from pg_namespace n where n.nspname = any($1)""",
    "relations": f"""
        select n.nspname || '.' || c.relname as name, c.relkind::text, c.relrowsecurity,
               c.relforcerowsecurity, {_ACL.format(acl="c.relacl")} as acl
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = any($1) and c.relkind in ('r', 'p', 'v', 'm', 'S', 'c')
          and n.nspname || '.' || c.relname <> $2""",
    "columns": """
        select n.nspname || '.' || c.relname as rel, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid) as default, a.attidentity::text,
               a.attgenerated::text, a.attcollation::regcollation::text
        from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where n.nspname = any($1) and c.relkind in ('r', 'p', 'v', 'm', 'c') and a.attnum > 0
          and not a.attisdropped and n.nspname || '.' || c.relname <> $2""",
    "views": """
        select c.oid::regclass::text, pg_get_viewdef(c.oid) from pg_class c
        join pg_namespace n on n.oid = c.relnamespace where n.nspname = any($1) and c.relkind in ('v', 'm')""",
    "indexes": """
        select pg_get_indexdef(i.indexrelid) from pg_index i
        join pg_class c on c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = any($1) and n.nspname || '.' || c.relname <> $2""",
    "constraints": """
        select coalesce(n.nspname || '.' || c.relname, t.typname) as owner, co.conname,
               pg_get_constraintdef(co.oid)
        from pg_constraint co join pg_namespace cn on cn.oid = co.connamespace
        left join pg_class c on c.oid = co.conrelid left join pg_namespace n on n.oid = c.relnamespace
        left join pg_type t on t.oid = co.contypid
        where cn.nspname = any($1) and coalesce(n.nspname || '.' || c.relname, '') <> $2""",
    "triggers": """
        select pg_get_triggerdef(t.oid) from pg_trigger t
        join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
        where not t.tgisinternal and (n.nspname = any($1) or n.nspname = 'realtime')""",
    "policies": """
        select schemaname, tablename, policyname, permissive, roles::text[], cmd, qual, with_check
        from pg_policies""",
    "functions": f"""
        select p.oid::regprocedure::text as signature, pg_get_functiondef(p.oid) as definition,
               pg_get_userbyid(p.proowner) as owner, {_ACL.format(acl="p.proacl")} as acl
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = any($1)""",
    "sequences": """
        select s.seqrelid::regclass::text, format_type(s.seqtypid, null), s.seqstart, s.seqincrement,
               s.seqmax, s.seqmin, s.seqcache, s.seqcycle
        from pg_sequence s join pg_class c on c.oid = s.seqrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = any($1)""",
}


async def catalog(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the schema declares (see :data:`QUERIES`), each kind as a sorted list of rows."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    for kind, query in QUERIES.items():
        args: list[Any] = []
        if "$1" in query:
            args.append(list(SCHEMAS))
        if "$2" in query:
            args.append(LEDGER)
        rows = await conn.fetch(query, *args)
        result[kind] = sorted((tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in rows),
                              key=repr)
    return result


def differences(a: dict[str, list[tuple[Any, ...]]], b: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    """Human-readable differences between two catalogs (empty when they are equal)."""
    found = []
    for kind in a.keys() | b.keys():
        left, right = set(a.get(kind, [])), set(b.get(kind, []))
        found += [f"{kind}: only in the first: {row}" for row in sorted(left - right, key=repr)]
        found += [f"{kind}: only in the second: {row}" for row in sorted(right - left, key=repr)]
    return found


_names = itertools.count()


@asynccontextmanager
async def empty_database(test_databases: TestDatabases, *, prefix: str = "empty") -> AsyncIterator[str]:
    """A new database with nothing in it (not even the bootstrap); its URL. Dropped afterwards.
    (Server-wide roles the bootstrap creates are shared by every database of the server.)"""
    assert test_databases.server is not None
    name = f"{prefix}_{next(_names)}"
    admin = await asyncpg.connect(test_databases.server.url("postgres"))
    try:
        await admin.execute(f'drop database if exists "{name}"')
        await admin.execute(f'create database "{name}" template template0')
    finally:
        await admin.close()
    try:
        yield test_databases.server.url(name)
    finally:
        admin = await asyncpg.connect(test_databases.server.url("postgres"))
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()


# What a Supabase project's database does to everything `postgres` creates in public (supabase/postgres
# migrations): anon and authenticated get every privilege unless a migration revokes it.
SUPABASE_DEFAULT_PRIVILEGES = """
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
"""


async def with_supabase_default_privileges(url: str) -> None:
    """Prepare an empty database as Supabase would be before the migrations run: the roles (the
    bootstrap) and Supabase's default privileges in public."""
    from agent_runtime.local.migrations import bootstrap_sql

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(bootstrap_sql())
        await conn.execute(SUPABASE_DEFAULT_PRIVILEGES)
    finally:
        await conn.close()

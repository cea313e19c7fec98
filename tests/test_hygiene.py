"""The rules a Supabase user's dashboard checks (its advisors are catalog queries), run over the whole
schema so a new function or table cannot break them unnoticed, on a database that had Supabase's
default privileges before it was migrated (anon and authenticated get everything by default).
Each rule is a query listing its violators; the last test shows each query does find violators."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from agent_runtime.local.migrations import migrate
from agent_runtime.testing import TestDatabases
from tests.catalog import empty_database, with_supabase_default_privileges

OURS = "('public', 'agent_runtime_private')"
INTENDED_SELECTS = ("distributed_agents", "agent_presence", "communication_channels", "channel_subscriptions",
                    "distributed_messages", "message_dead_letters", "distributed_locks", "communication_metrics")

RULES: dict[str, str] = {
    # splinter's function_search_path_mutable, stricter: the path must be empty (every name qualified).
    "function without search_path = ''": f"""
        select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in {OURS} and not coalesce('search_path=""' = any (p.proconfig), false)""",
    "table without row level security": """
        select c.oid::regclass::text from pg_class c
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p') and not c.relrowsecurity""",
    # splinter's unindexed_foreign_keys: an index whose leading columns are the key's columns.
    "foreign key without an index": f"""
        select co.conrelid::regclass::text || ' ' || co.conname from pg_constraint co
        join pg_namespace n on n.oid = co.connamespace
        where co.contype = 'f' and n.nspname in {OURS} and not exists (
          select 1 from pg_index i where i.indrelid = co.conrelid
            and (i.indkey::int2[])[0:cardinality(co.conkey) - 1] = co.conkey)""",
    "function executable by anon or PUBLIC": f"""
        select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in {OURS} and (has_function_privilege('anon', p.oid, 'execute')
          or exists (select 1 from aclexplode(p.proacl) a where a.grantee = 0)
          or p.proacl is null)""",
    "private function executable by anyone but its owner": """
        select p.oid::regprocedure::text || ' by ' || r.rolname from pg_proc p
        cross join (select rolname from pg_roles where rolname in ('anon', 'authenticated', 'service_role')) r
        where p.pronamespace = 'agent_runtime_private'::regnamespace
          and has_function_privilege(r.rolname, p.oid, 'execute')""",
    "agent_runtime_private usable by an API role": """
        select r.rolname from pg_roles r where r.rolname in ('anon', 'authenticated', 'service_role')
          and has_schema_privilege(r.rolname, 'agent_runtime_private', 'usage')""",
    # Any privilege of anon, authenticated or PUBLIC on a table or sequence other than the intended
    # SELECTs of authenticated (this covers TRUNCATE, which RLS does not limit, and setval/nextval).
    "table or sequence privilege beyond the intended SELECTs": f"""
        select c.oid::regclass::text || ' ' || coalesce(r.rolname, 'PUBLIC') || ' ' || a.privilege_type
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        cross join lateral aclexplode(coalesce(c.relacl, acldefault(
          case when c.relkind = 'S' then 's' else 'r' end::"char", c.relowner))) a
        left join pg_roles r on r.oid = a.grantee
        where n.nspname in {OURS} and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
          and (a.grantee = 0 or r.rolname in ('anon', 'authenticated'))
          and not (r.rolname = 'authenticated' and a.privilege_type = 'SELECT' and c.relkind = 'r'
                   and n.nspname = 'public' and c.relname = any ($1::text[]))""",
    "column privilege of an API role": f"""
        select c.oid::regclass::text || '.' || at.attname from pg_attribute at
        join pg_class c on c.oid = at.attrelid join pg_namespace n on n.oid = c.relnamespace
        cross join lateral aclexplode(at.attacl) a left join pg_roles r on r.oid = a.grantee
        where n.nspname in {OURS} and (a.grantee = 0 or r.rolname in ('anon', 'authenticated'))""",
    # One decision clock: a function reading the wall clock itself would ignore the test clock
    # (and the rule that every decision takes the clock in one place). Comments aside.
    "function reading the clock but through agent_runtime_private.clock()": f"""
        select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in {OURS} and p.oid <> 'agent_runtime_private.clock()'::regprocedure
          and regexp_replace(p.prosrc, '--[^' || chr(10) || ']*', '', 'g')
              ~* '(clock_timestamp|statement_timestamp|transaction_timestamp|\\mnow)\\s*\\('""",
}


async def violations(conn: asyncpg.Connection, rule: str) -> list[str]:
    query = RULES[rule]
    args = [list(INTENDED_SELECTS)] if "$1" in query else []
    return sorted(r[0] for r in await conn.fetch(query, *args))


@pytest.fixture(scope="module")
async def supabase_like(test_databases: TestDatabases) -> AsyncIterator[str]:
    """A database with Supabase's default privileges, then migrated."""
    async with empty_database(test_databases, prefix="hygiene") as url:
        await with_supabase_default_privileges(url)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield url


@pytest.mark.parametrize("rule", RULES)
async def test_rule_holds_over_the_whole_schema(supabase_like: str, rule: str) -> None:
    """No object of the schema breaks the rule, whatever the default privileges granted."""
    conn = await asyncpg.connect(supabase_like)
    try:
        assert await violations(conn, rule) == []
    finally:
        await conn.close()


async def test_the_default_privileges_were_in_force(supabase_like: str) -> None:
    """(The rules above are meaningful: a table created now in public does get anon's TRUNCATE.)"""
    conn = await asyncpg.connect(supabase_like)
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("create table public.probe (id int)")
        assert await conn.fetchval("select has_table_privilege('anon', 'public.probe', 'truncate')")
    finally:
        await tr.rollback()
        await conn.close()


async def test_each_rule_finds_its_violators(supabase_like: str) -> None:
    """Objects added without the hygiene (in a transaction rolled back after) are each reported."""
    conn = await asyncpg.connect(supabase_like)
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("""
            create table public.careless (id int primary key,
                                          agent_id text references public.distributed_agents (id));
            create function public.careless_fn() returns int language sql security definer as $$ select 1 $$;
            create function agent_runtime_private.careless_helper() returns int language sql
              set search_path = '' as $$ select 1 $$;
            grant execute on function agent_runtime_private.careless_helper() to authenticated;
            grant usage on schema agent_runtime_private to authenticated;
            grant update (agent_id) on public.careless to authenticated;
            create function agent_runtime_private.careless_clock() returns timestamptz language sql
              set search_path = '' as $$ select pg_catalog.now() $$;
        """)
        found = {rule: await violations(conn, rule) for rule in RULES}
    finally:
        await tr.rollback()
        await conn.close()
    assert found["function without search_path = ''"] == ["careless_fn()"]
    assert found["table without row level security"] == ["careless"]
    assert found["foreign key without an index"] == ["careless careless_agent_id_fkey"]
    assert "careless_fn()" in found["function executable by anon or PUBLIC"]
    assert "agent_runtime_private.careless_helper() by authenticated" in found[
        "private function executable by anyone but its owner"]
    assert found["agent_runtime_private usable by an API role"] == ["authenticated"]
    assert "careless anon TRUNCATE" in found["table or sequence privilege beyond the intended SELECTs"]
    assert found["column privilege of an API role"] == ["careless.agent_id"]
    assert found["function reading the clock but through agent_runtime_private.clock()"] == [
        "agent_runtime_private.careless_clock()"]

-- The test clock: applied by agent_runtime.testing.TestDatabases to its template database only,
-- after the migrations (never by a migration, so no migrated database ever has it).
--
-- agent_runtime_private.clock() (every decision's clock: TTLs, visibility, presence, leases,
-- retention) becomes pg_catalog.clock_timestamp() plus the offset in test_clock. Only the owner
-- of test_clock (the role that built the template: TestDatabases' superuser connection) may change
-- it: privileges on it are revoked from everyone else, and it is a table, not a setting, so a
-- session (an agent's JWT, service_role, PostgREST's request settings) cannot move the clock.
-- The clock only moves forward: advanced_by is never negative.

create table agent_runtime_private.test_clock (
  only_row    boolean primary key default true check (only_row),
  advanced_by interval not null default interval '0' check (advanced_by >= interval '0')
);
insert into agent_runtime_private.test_clock default values;
revoke all on table agent_runtime_private.test_clock from public, anon, authenticated, service_role;

-- Security definer: it reads test_clock as its owner whoever calls it (callers are the runtime's
-- functions, which run as their owner anyway).
create or replace function agent_runtime_private.clock() returns timestamptz
language sql volatile security definer set search_path = '' as $$
  select pg_catalog.clock_timestamp() + coalesce((select t.advanced_by from agent_runtime_private.test_clock t),
                                                 interval '0')
$$;
revoke all on function agent_runtime_private.clock() from public, anon, authenticated, service_role;

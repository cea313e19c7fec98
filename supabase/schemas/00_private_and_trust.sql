-- agent_runtime declared schema, part 00: the private schema and who may act as whom.
--
-- The files of supabase/schemas/ are the current definition of the runtime's SQL, one concern per
-- file, applied in file-name order. supabase/migrations/ builds exactly this (tests/test_schema.py
-- keeps the two equal): change a file here AND add a migration, never edit an applied migration.
--
-- The SQL is the single source of the runtime's semantics: every rule that must hold across
-- processes (atomicity, ordering, expiry, fencing, ownership) lives in these functions and uses the
-- database clock. Clients only call the public functions (over asyncpg or PostgREST).
--
-- Domain errors use SQLSTATEs of class 'AR' (mapped to exceptions in agent_runtime/errors.py):
--   AR400 invalid input        AR401 invalid name          AR403 not allowed to act as that agent
--   AR404 unknown agent        AR405 unknown channel       AR406 unknown message
--   AR408 concurrent conflict  AR409 lock not held        AR412 channel kind mismatch
--   AR413 payload too large    AR422 stale fencing token
--
-- Owns: schema agent_runtime_private; assert_acting_as, is_trusted, ms, jwt_agent_id.

create schema if not exists agent_runtime_private;
revoke all on schema agent_runtime_private from public;

-- Who may act as p_agent: trusted callers (service_role JWT, or a direct login that did not switch
-- to anon/authenticated) act as anyone; an 'authenticated' JWT only as the agent in its
-- 'agent_id' claim; anon never.
create function agent_runtime_private.assert_acting_as(p_agent text) returns void
language plpgsql stable as $$
declare
  v_claims jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
  v_role text := coalesce(v_claims ->> 'role', nullif(current_setting('role', true), 'none'));
begin
  if v_role = 'service_role' then
    return;
  end if;
  if v_role = 'authenticated' and v_claims ->> 'agent_id' = p_agent then
    return;
  end if;
  if v_role is null or v_role not in ('anon', 'authenticated') then
    return;  -- direct database login (owner or a role granted by the operator)
  end if;
  raise exception 'not allowed to act as agent %', coalesce(p_agent, '<null>')
    using errcode = 'AR403', hint = 'an agent token may only act as the agent in its agent_id claim';
end
$$;

-- Milliseconds from a client to an interval, range-checked; null stays null (the caller's default).
create function agent_runtime_private.is_trusted() returns boolean
language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role',
                  nullif(current_setting('role', true), 'none'), '') not in ('anon', 'authenticated')
$$;

create function agent_runtime_private.ms(p_ms bigint, p_what text, p_min bigint, p_max bigint)
returns interval language plpgsql immutable as $$
begin
  if p_ms is null then
    return null;
  end if;
  if p_ms < p_min or p_ms > p_max then
    raise exception '% must be between % and % ms (got %)', p_what, p_min, p_max, p_ms
      using errcode = 'AR400';
  end if;
  return p_ms * interval '1 millisecond';
end
$$;

create function agent_runtime_private.jwt_agent_id() returns text
language sql stable as $$
  select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'agent_id'
$$;

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
-- Every function has `set search_path = ''` and names every non-pg_catalog object in full, and
-- is created with an explicit `revoke all ... from public, anon, authenticated` before its intended
-- grants, so nothing depends on a database's default privileges (Supabase grants everything in
-- public to anon and authenticated by default). tests/test_hygiene.py checks these rules over the
-- whole catalog.
--
-- Who is calling is decided by the real role, never by claims a session can set: the role the
-- session switched to (`SET ROLE`, as PostgREST does for each request; a session may only switch to
-- roles it is a member of), or else the role it logged in as. Inside a SECURITY DEFINER function
-- current_user is the function's owner, so neither current_user nor the JWT's 'role' claim says
-- anything about the caller. The JWT claims (request.jwt.claims) only name the agent an
-- 'authenticated' caller is.
--   * anon, authenticator: untrusted, may act as no agent;
--   * authenticated: may act only as the agent in its JWT's 'agent_id' claim;
--   * anyone else (service_role, the owner, a direct login the operator granted): trusted.
--
-- Owns: schema agent_runtime_private (private helpers, executable by their owner only);
-- clock, caller_role, is_trusted, assert_trusted, assert_acting_as, jwt_agent_id, ms.

create schema if not exists agent_runtime_private;
revoke all on schema agent_runtime_private from public, anon, authenticated, service_role;

-- clock() -> timestamptz: the database clock every decision reads (message visibility and TTL,
-- claims and retries, presence expiry, lock leases, retention, metrics windows): one function, so
-- that tests can move it. Here it is pg_catalog.clock_timestamp(). SQL statements read it as
-- `(select agent_runtime_private.clock())`, in the statement that decides: an InitPlan, evaluated
-- once when that statement runs (after its snapshot is taken, so after every commit it can see;
-- never at the transaction's start as now() is), and called once per statement rather than once
-- per row (a function with a pinned search_path is not inlined). PL/pgSQL expressions (v_now :=
-- ..., IF, EXIT WHEN) call agent_runtime_private.clock() directly. PL/pgSQL itself: as a SQL
-- function it was parsed and planned again on every call from a new statement (14-16 us a call in
-- a send, track_functions; 1.3-1.4 us as PL/pgSQL).
-- Only agent_runtime.testing.TestDatabases redefines it, in the template of its test databases, to
-- add an offset kept in a table only the table's owner may write (agent_runtime/testing/
-- test_clock.sql). Trust comes from real roles there too: no setting or JWT claim a session can
-- set changes what it returns, and in a migrated database it has no offset at all.
-- Raises nothing.
create function agent_runtime_private.clock() returns timestamptz
language plpgsql volatile set search_path = '' as $$
begin
  return pg_catalog.clock_timestamp();
end
$$;
revoke all on function agent_runtime_private.clock() from public, anon, authenticated, service_role;

-- caller_role() -> text: the caller's real role (see the top of this file): the SET ROLE value
-- when the session switched role, else the login role. Never null; raises nothing. PL/pgSQL: a SQL
-- function with a pinned search_path is not inlined, and was parsed and planned again on every
-- call (every API call makes one: a tenth of the server time of a queue claim of one message).
create function agent_runtime_private.caller_role() returns text
language plpgsql stable set search_path = '' as $$
begin
  return case when current_setting('role') = 'none' then session_user::text else current_setting('role') end;
end
$$;
revoke all on function agent_runtime_private.caller_role() from public, anon, authenticated, service_role;

-- is_trusted() -> boolean: true unless the caller's real role is anon, authenticated or
-- authenticator. Raises nothing.
create function agent_runtime_private.is_trusted() returns boolean
language sql stable set search_path = '' as $$
  select agent_runtime_private.caller_role() not in ('anon', 'authenticated', 'authenticator')
$$;
revoke all on function agent_runtime_private.is_trusted() from public, anon, authenticated, service_role;

-- assert_trusted(p_what text) -> void: returns when the caller is trusted (maintenance functions).
-- Raises AR403 naming p_what otherwise.
create function agent_runtime_private.assert_trusted(p_what text) returns void
language plpgsql stable set search_path = '' as $$
begin
  if not agent_runtime_private.is_trusted() then
    raise exception '% is for trusted callers (the service role or a direct login)', p_what
      using errcode = 'AR403', hint = 'agent tokens cannot run maintenance';
  end if;
end
$$;
revoke all on function agent_runtime_private.assert_trusted(text) from public, anon, authenticated, service_role;

-- jwt_agent_id() -> text: the 'agent_id' claim of the request's JWT (request.jwt.claims), or null.
-- Meaningful only for an 'authenticated' caller. Raises 22P02 if the claims are not JSON.
create function agent_runtime_private.jwt_agent_id() returns text
language sql stable set search_path = '' as $$
  select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'agent_id'
$$;
revoke all on function agent_runtime_private.jwt_agent_id() from public, anon, authenticated, service_role;

-- assert_acting_as(p_agent text) -> void: returns when the caller may act as agent p_agent: a
-- trusted caller as anyone, an 'authenticated' caller only as the agent in its JWT's 'agent_id'
-- claim. Raises AR403 otherwise (anon and authenticator never act as an agent).
create function agent_runtime_private.assert_acting_as(p_agent text) returns void
language plpgsql stable set search_path = '' as $$
declare
  v_role text := agent_runtime_private.caller_role();
begin
  if v_role not in ('anon', 'authenticated', 'authenticator') then
    return;  -- trusted: the service role, the owner, a role granted by the operator
  end if;
  if v_role = 'authenticated' and agent_runtime_private.jwt_agent_id() = p_agent then
    return;
  end if;
  raise exception 'not allowed to act as agent %', coalesce(p_agent, '<null>')
    using errcode = 'AR403', hint = 'an agent token may only act as the agent in its agent_id claim';
end
$$;
revoke all on function agent_runtime_private.assert_acting_as(text) from public, anon, authenticated, service_role;

-- ms(p_ms bigint, p_what text, p_min bigint, p_max bigint) -> interval: milliseconds from a client
-- as an interval; null stays null (the caller's default). Raises AR400 naming p_what when p_ms is
-- outside [p_min, p_max].
create function agent_runtime_private.ms(p_ms bigint, p_what text, p_min bigint, p_max bigint)
returns interval language plpgsql immutable set search_path = '' as $$
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
revoke all on function agent_runtime_private.ms(bigint, text, bigint, bigint) from public, anon, authenticated, service_role;

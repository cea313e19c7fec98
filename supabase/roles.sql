-- The plain-PostgreSQL bootstrap: what a Supabase project already has and the migrations rely on:
-- the API roles (anon, authenticated, service_role), auth.jwt(), auth.uid(), auth.role() as GoTrue
-- defines them, and stand-ins for realtime.messages, realtime.topic() and realtime.send().
--
-- It lives here, as the Supabase CLI's supabase/roles.sql, so that both ways of migrating work on a
-- plain Postgres: `agent-runtime migrate` (and an agent migrating on connect) runs it first, and
-- `supabase db push --include-roles --db-url ...` applies it before the migrations. (The wheel
-- ships it as agent_runtime/_sql/bootstrap.sql.) On a Supabase database (it has the supabase_admin
-- role) it does nothing at all; elsewhere every object is created only if missing, so running it
-- again changes nothing.

do $bootstrap$
begin
  if exists (select 1 from pg_roles where rolname = 'supabase_admin') then
    return;  -- a Supabase database: everything below is already there, and is not ours to touch
  end if;

  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;

  create schema if not exists auth;
  create schema if not exists realtime;
  grant usage on schema auth, realtime to anon, authenticated, service_role;

  -- auth.jwt(), auth.uid() and auth.role() as GoTrue defines them: read from the PostgREST GUCs.
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $f$;
  end if;
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $f$;
  end if;
  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
      )::text
    $f$;
  end if;

  -- realtime.messages (the table private-channel policies are written on) and realtime.send as
  -- Supabase Realtime defines them. Nothing streams a table out of plain Postgres, so send()
  -- does not store the message; it emits a pg_notify on 'realtime:broadcast' instead, which a
  -- local stand-in for Realtime can forward (delivered after commit, in commit order, like WAL).
  -- The runtime's triggers call it only where agent_runtime_private.wakeup_routes says a Realtime
  -- hears it (on plain Postgres: while such a stand-in runs), so the exception block below (a
  -- subtransaction per call, as Supabase's own has) costs nothing otherwise.
  if to_regclass('realtime.messages') is null then
    create table realtime.messages (
      topic text not null,
      extension text not null,
      payload jsonb,
      event text,
      private boolean default false,
      updated_at timestamp not null default now(),
      inserted_at timestamp not null default now(),
      id uuid not null default gen_random_uuid(),
      binary_payload bytea,
      primary key (id, inserted_at)
    );
    alter table realtime.messages enable row level security;
    grant select, insert, update on realtime.messages to anon, authenticated, service_role;
  end if;
  if to_regprocedure('realtime.topic()') is null then
    create function realtime.topic() returns text language sql stable as $f$
      select nullif(current_setting('realtime.topic', true), '')::text
    $f$;
  end if;
  if to_regprocedure('realtime.send(jsonb,text,text,boolean)') is null then
    create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
    returns void language plpgsql as $f$
    declare
      v_payload jsonb := payload;
    begin
      if v_payload ? 'id' is false then
        v_payload := v_payload || jsonb_build_object('id', gen_random_uuid());
      end if;
      perform pg_notify('realtime:broadcast', jsonb_build_object(
        'topic', topic, 'event', event, 'private', private, 'payload', v_payload)::text);
    exception when others then
      raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end
    $f$;
  end if;
end
$bootstrap$;

-- agent_runtime: the communication schema (the initial migration).
--
-- The readable, current definition lives in supabase/schemas/ (one file per concern); this file
-- and the migrations after it build exactly that (tests/test_schema.py compares the catalogs).
-- Never edit an applied migration: every change is a new file. (Squashed before the first release
-- from four files, kept as test data in tests/fixtures/legacy_migrations/: a database they built
-- equals one this file builds, and the migrator recognises it.)
--
-- Domain errors use SQLSTATEs of class 'AR' (mapped to exceptions in agent_runtime/errors.py):
--   AR400 invalid input        AR401 invalid name          AR403 not allowed to act as that agent
--   AR404 unknown agent        AR405 unknown channel       AR406 unknown message
--   AR408 concurrent conflict  AR409 lock not held        AR412 channel kind mismatch AR413 payload too large
--   AR422 stale fencing token
--
-- Wake-ups: triggers pg_notify compact JSON on the 'agent_runtime' channel and broadcast the same
-- through realtime.send (Supabase Realtime; a stand-in on plain Postgres). They are hints: the
-- cursor and claim functions decide what a consumer gets.

create schema if not exists agent_runtime_private;
revoke all on schema agent_runtime_private from public;

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

create table public.distributed_agents (
  id            text primary key
                check (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
  name          text not null check (name ~ '^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,127}$'),
  kind          text not null default 'agent' check (kind ~ '^[a-z][a-z0-9_-]{0,63}$'),
  capabilities  text[] not null default '{}'
                check (cardinality(capabilities) <= 64),
  version       text not null default '' check (length(version) <= 64),
  host          text not null default '' check (length(host) <= 255),
  pid           integer,
  metadata      jsonb not null default '{}'::jsonb
                check (jsonb_typeof(metadata) = 'object' and pg_column_size(metadata) <= 65536),
  status        text not null default 'online'
                check (status in ('online', 'busy', 'away', 'offline')),
  heartbeat_ttl interval not null default interval '15 seconds'
                check (heartbeat_ttl between interval '1 second' and interval '1 hour'),
  started_at    timestamptz not null default now(),
  registered_at timestamptz not null default now(),
  last_seen     timestamptz not null default now(),
  incarnation   integer not null default 1
);
create index distributed_agents_capabilities_idx on public.distributed_agents using gin (capabilities);
create index distributed_agents_name_idx on public.distributed_agents (name);

create table public.agent_presence (
  agent_id     text primary key references public.distributed_agents (id) on delete cascade,
  status       text not null default 'online'
               check (status in ('online', 'busy', 'away', 'offline')),
  load         real not null default 0 check (load >= 0 and load <= 1),
  info         jsonb not null default '{}'::jsonb check (jsonb_typeof(info) = 'object'),
  heartbeat_at timestamptz not null default now(),
  expires_at   timestamptz not null,
  changed_at   timestamptz not null default now()
);
-- The janitor and the online view scan by expiry.
create index agent_presence_expires_idx on public.agent_presence (expires_at) where status <> 'offline';

create table public.communication_channels (
  id                  bigint generated always as identity primary key,
  name                text not null unique
                      check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
  kind                text not null check (kind in ('broadcast', 'queue', 'direct')),
  owner_id            text references public.distributed_agents (id) on delete cascade,
  retention           interval not null default interval '1 day'
                      check (retention > interval '0'),
  message_ttl         interval check (message_ttl is null or message_ttl > interval '0'),
  max_attempts        integer not null default 5 check (max_attempts between 1 and 1000),
  visibility_timeout  interval not null default interval '30 seconds'
                      check (visibility_timeout between interval '100 milliseconds' and interval '12 hours'),
  max_payload_bytes   integer not null default 262144 check (max_payload_bytes between 1 and 1048576),
  metadata            jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  -- Per-channel sequence. Producers take this row's lock to number their messages, so seq order
  -- is commit order and a cursor can never skip a producer that commits late.
  last_seq            bigint not null default 0,
  created_by          text,
  created_at          timestamptz not null default now(),
  check ((kind = 'direct') = (owner_id is not null))
);

create table public.channel_subscriptions (
  channel_id     bigint not null references public.communication_channels (id) on delete cascade,
  agent_id       text not null references public.distributed_agents (id) on delete cascade,
  -- Broadcast: every seq <= cursor_seq is acknowledged by this subscriber (cumulative ack).
  cursor_seq     bigint not null default 0,
  -- Broadcast redelivery is head-of-line: a nacked seq is retried before anything after it.
  retry_seq      bigint,
  retry_attempts integer not null default 0,
  retry_at       timestamptz,
  subscribed_at  timestamptz not null default now(),
  updated_at     timestamptz not null default now(),
  primary key (channel_id, agent_id)
);
create index channel_subscriptions_agent_idx on public.channel_subscriptions (agent_id);

create table public.distributed_messages (
  id              bigint generated always as identity primary key,
  channel_id      bigint not null references public.communication_channels (id) on delete cascade,
  seq             bigint not null,
  sender_id       text not null,
  payload         jsonb not null,
  headers         jsonb not null default '{}'::jsonb check (jsonb_typeof(headers) = 'object'),
  size_bytes      integer not null check (size_bytes between 0 and 1048576),
  correlation_id  uuid,
  reply_to        text,
  idempotency_key text check (idempotency_key is null or length(idempotency_key) between 1 and 200),
  created_at      timestamptz not null default now(),
  expires_at      timestamptz,
  -- Queue and direct channels: per-message delivery state. Broadcast rows stay 'ready'.
  state           text not null default 'ready' check (state in ('ready', 'inflight', 'acked', 'dead')),
  attempts        integer not null default 0,
  visible_at      timestamptz not null default now(),
  claimed_by      text,
  acked_at        timestamptz,
  last_error      text,
  unique (channel_id, seq)
);
-- Claim scans ready or timed-out messages of one channel in seq order.
create index distributed_messages_claim_idx on public.distributed_messages (channel_id, seq)
  where state in ('ready', 'inflight');
create unique index distributed_messages_idempotency_idx
  on public.distributed_messages (sender_id, idempotency_key) where idempotency_key is not null;
create index distributed_messages_expiry_idx on public.distributed_messages (expires_at)
  where expires_at is not null;
create index distributed_messages_created_idx on public.distributed_messages (created_at);
create index distributed_messages_dead_idx on public.distributed_messages (channel_id, id)
  where state = 'dead';

-- Dead letters of broadcast subscribers (a queue message's dead state is on the message itself,
-- a broadcast message is shared so its dead state is per subscriber).
create table public.message_dead_letters (
  id          bigint generated always as identity primary key,
  message_id  bigint not null references public.distributed_messages (id) on delete cascade,
  agent_id    text not null references public.distributed_agents (id) on delete cascade,
  attempts    integer not null,
  reason      text,
  state       text not null default 'dead' check (state in ('dead', 'replaying', 'resolved')),
  dead_at     timestamptz not null default now(),
  replayed_at timestamptz,
  unique (message_id, agent_id)
);
create index message_dead_letters_agent_idx on public.message_dead_letters (agent_id, state);

-- Fencing tokens come from one sequence: strictly increasing per key across owners, and still so
-- after a lock row is cleaned up.
create sequence public.distributed_locks_token_seq;

create table public.distributed_locks (
  -- (Postgres regexes allow repetition counts up to 255 only, hence char_length.)
  key         text primary key check (char_length(key) between 1 and 256 and key !~ '[[:cntrl:]]'),
  owner_id    text not null references public.distributed_agents (id) on delete cascade,
  lease_id    uuid not null,
  token       bigint not null,
  acquired_at timestamptz not null default now(),
  renewed_at  timestamptz not null default now(),
  expires_at  timestamptz not null,
  metadata    jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object')
);
create index distributed_locks_expires_idx on public.distributed_locks (expires_at);
create index distributed_locks_owner_idx on public.distributed_locks (owner_id);

create table public.communication_metrics (
  agent_id text not null references public.distributed_agents (id) on delete cascade,
  channel  text not null default '',
  metric   text not null check (metric ~ '^[a-z][a-z0-9_.]{0,127}$'),
  bucket   timestamptz not null,
  count    bigint not null default 0,
  sum      double precision not null default 0,
  min      double precision,
  max      double precision,
  primary key (agent_id, channel, metric, bucket)
);
create index communication_metrics_bucket_idx on public.communication_metrics (bucket);

-- ---------------------------------------------------------------------------------------------
-- Composite types (rows the functions build documents from)
-- ---------------------------------------------------------------------------------------------

create type agent_runtime_private.topology_agent as (
  id text, name text, kind text, capabilities text[], version text, host text, pid integer,
  metadata jsonb, status text, load real, online boolean, started_at timestamptz,
  last_seen timestamptz, heartbeat_at timestamptz, expires_at timestamptz, incarnation integer
);

create type agent_runtime_private.topology_channel as (
  name text, kind text, owner_id text, last_seq bigint
);

create type agent_runtime_private.topology_subscription as (
  agent_id text, channel text, cursor bigint, lag bigint
);

create type agent_runtime_private.topology_flow as (
  "from" text, channel text, "to" text, messages bigint, bytes bigint, last_at timestamptz
);

create type agent_runtime_private.message_wire as (
  id bigint, channel text, seq bigint, sender_id text, payload jsonb, headers jsonb, size_bytes integer,
  correlation_id uuid, reply_to text, idempotency_key text, created_at timestamptz,
  expires_at timestamptz, attempts integer
);

create type agent_runtime_private.outgoing_message as (
  ord integer, payload jsonb, headers jsonb, size_bytes integer, idempotency_key text,
  correlation_id uuid, reply_to text, ttl interval, delay interval, existing_id bigint,
  existing_seq bigint, dup_of integer
);

-- ---------------------------------------------------------------------------------------------
-- Private helpers
-- ---------------------------------------------------------------------------------------------

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

create function agent_runtime_private.agent_exists(p_agent text) returns void
language plpgsql stable as $$
begin
  if not exists (select 1 from public.distributed_agents where id = p_agent) then
    raise exception 'unknown agent %', p_agent using errcode = 'AR404',
      hint = 'register the agent first';
  end if;
end
$$;

create function agent_runtime_private.channel(p_name text)
returns public.communication_channels language plpgsql stable as $$
declare
  v public.communication_channels;
begin
  select * into v from public.communication_channels where name = p_name;
  if not found then
    if p_name ~ '^agent:' then
      raise exception 'unknown agent %', substr(p_name, 7) using errcode = 'AR404';
    end if;
    raise exception 'unknown channel %', p_name using errcode = 'AR405',
      hint = 'create it with ensure_channel';
  end if;
  return v;
end
$$;

create function agent_runtime_private.message_row(m public.distributed_messages, p_channel text,
                                                             p_attempts integer)
returns agent_runtime_private.message_wire language sql stable as $$
  select row(m.id, p_channel, m.seq, m.sender_id, m.payload, m.headers, m.size_bytes, m.correlation_id,
             m.reply_to, m.idempotency_key, m.created_at, m.expires_at,
             p_attempts)::agent_runtime_private.message_wire
$$;

-- The same document as jsonb (list_dead_letters adds keys to it).
create function agent_runtime_private.message_json(m public.distributed_messages, p_channel text,
                                                              p_attempts integer)
returns jsonb language sql stable as $$
  select to_jsonb(agent_runtime_private.message_row(m, p_channel, p_attempts))
$$;

-- An agent with its presence as one row (p may be null: an agent without a presence row is
-- offline). Inlined by the planner where it is called, so a caller's columns are read directly.
create function agent_runtime_private.agent_row(a public.distributed_agents, p public.agent_presence)
returns agent_runtime_private.topology_agent language sql stable as $$
  select row(
    a.id, a.name, a.kind, a.capabilities, a.version, a.host, a.pid, a.metadata,
    case when p.expires_at is null or p.expires_at <= now() then 'offline' else p.status end,
    coalesce(p.load, 0), coalesce(p.status <> 'offline' and p.expires_at > now(), false),
    a.started_at, a.last_seen, p.heartbeat_at, p.expires_at, a.incarnation
  )::agent_runtime_private.topology_agent
$$;

create function agent_runtime_private.agent_json(a public.distributed_agents, p public.agent_presence)
returns json language sql stable as $$
  select to_json(agent_runtime_private.agent_row(a, p))
$$;

-- ---------------------------------------------------------------------------------------------
-- Registry and presence
-- ---------------------------------------------------------------------------------------------

-- The registry functions return agent_json as jsonb, as before.
create function public.register_agent(
  p_agent_id text, p_name text, p_kind text default 'agent', p_capabilities text[] default '{}',
  p_version text default '', p_host text default '', p_pid integer default null,
  p_metadata jsonb default '{}'::jsonb, p_heartbeat_ttl_ms integer default 15000
) returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_ttl interval := coalesce(agent_runtime_private.ms(p_heartbeat_ttl_ms, 'heartbeat ttl', 1000, 3600000),
                             interval '15 seconds');
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
  v_resumed boolean;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_agent_id is null or p_agent_id !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$' then
    raise exception 'invalid agent id %', coalesce(p_agent_id, '<null>') using errcode = 'AR401',
      hint = '1-128 characters: letters, digits, _ . - (not starting with a symbol)';
  end if;
  if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,127}$' then
    raise exception 'invalid agent name %', coalesce(p_name, '<null>') using errcode = 'AR401';
  end if;
  if p_metadata is null or jsonb_typeof(p_metadata) <> 'object' then
    raise exception 'metadata must be a JSON object' using errcode = 'AR400';
  end if;
  select exists (select 1 from distributed_agents where id = p_agent_id) into v_resumed;
  insert into distributed_agents as a (id, name, kind, capabilities, version, host, pid, metadata,
                                       status, heartbeat_ttl)
  values (p_agent_id, p_name, coalesce(p_kind, 'agent'), coalesce(p_capabilities, '{}'),
          coalesce(p_version, ''), coalesce(p_host, ''), p_pid, p_metadata, 'online', v_ttl)
  on conflict (id) do update set
    name = excluded.name, kind = excluded.kind, capabilities = excluded.capabilities,
    version = excluded.version, host = excluded.host, pid = excluded.pid,
    metadata = excluded.metadata, status = 'online', heartbeat_ttl = excluded.heartbeat_ttl,
    started_at = now(), last_seen = now(), incarnation = a.incarnation + 1
  returning * into v_agent;

  insert into agent_presence as p (agent_id, status, heartbeat_at, expires_at, changed_at)
  values (p_agent_id, 'online', now(), now() + v_ttl, now())
  on conflict (agent_id) do update set
    status = 'online', heartbeat_at = now(), expires_at = now() + v_ttl, changed_at = now()
  returning * into v_presence;

  -- The agent's inbox: a direct channel only it consumes.
  insert into communication_channels (name, kind, owner_id, created_by)
  values ('agent:' || p_agent_id, 'direct', p_agent_id, p_agent_id)
  on conflict (name) do nothing;

  return agent_runtime_private.agent_json(v_agent, v_presence)::jsonb || jsonb_build_object('resumed', v_resumed);
exception
  when check_violation then
    raise exception 'invalid agent registration: %', sqlerrm using errcode = 'AR400';
end
$$;

-- The heartbeat (the seed's name): refreshes presence expiry and last_seen, optionally status/load.
create function public.update_agent_last_seen(
  p_agent_id text, p_status text default null, p_load real default null, p_info jsonb default null
) returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_status is not null and p_status not in ('online', 'busy', 'away', 'offline') then
    raise exception 'invalid status %', p_status using errcode = 'AR400';
  end if;
  if p_load is not null and (p_load < 0 or p_load > 1 or p_load = 'NaN') then
    raise exception 'load must be between 0 and 1' using errcode = 'AR400';
  end if;
  if p_info is not null and jsonb_typeof(p_info) <> 'object' then
    raise exception 'info must be a JSON object' using errcode = 'AR400';
  end if;
  update distributed_agents set last_seen = now(),
    status = coalesce(p_status, case when status = 'offline' then 'online' else status end)
  where id = p_agent_id returning * into v_agent;
  if not found then
    perform agent_runtime_private.agent_exists(p_agent_id);
  end if;
  update agent_presence set
    heartbeat_at = now(),
    expires_at = now() + v_agent.heartbeat_ttl,
    -- An agent whose presence had lapsed comes back online on its next heartbeat.
    status = coalesce(p_status, case when status = 'offline' or expires_at <= now()
                                     then v_agent.status else status end),
    load = coalesce(p_load, load),
    info = coalesce(p_info, info)
  where agent_id = p_agent_id
  returning * into v_presence;
  return agent_runtime_private.agent_json(v_agent, v_presence)::jsonb;
end
$$;

create function public.set_agent_status(p_agent_id text, p_status text, p_load real default null)
returns jsonb language sql security definer set search_path = public, pg_temp as $$
  select public.update_agent_last_seen(p_agent_id, p_status, p_load)
$$;

-- Orderly leave: marks the agent offline, keeps its row so the same id can resume.
create function public.deregister_agent(p_agent_id text) returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  update distributed_agents set status = 'offline', last_seen = now()
  where id = p_agent_id returning * into v_agent;
  if not found then
    perform agent_runtime_private.agent_exists(p_agent_id);
  end if;
  update agent_presence set status = 'offline', expires_at = now(), changed_at = now()
  where agent_id = p_agent_id returning * into v_presence;
  delete from distributed_locks where owner_id = p_agent_id;
  return agent_runtime_private.agent_json(v_agent, v_presence)::jsonb;
end
$$;

create function public.list_agents(p_capability text default null, p_online_only boolean default true)
returns jsonb language sql stable security definer set search_path = public, pg_temp as $$
  select coalesce(json_agg(agent_runtime_private.agent_json(a, p) order by a.id), '[]'::json)::jsonb
  from distributed_agents a
  left join agent_presence p on p.agent_id = a.id
  where (p_capability is null or a.capabilities @> array[p_capability])
    and (not p_online_only or (p.status <> 'offline' and p.expires_at > now()))
$$;

-- ---------------------------------------------------------------------------------------------
-- Channels and subscriptions
-- ---------------------------------------------------------------------------------------------

create function agent_runtime_private.channel_json(c public.communication_channels) returns jsonb
language sql stable as $$
  select jsonb_build_object(
    'id', c.id, 'name', c.name, 'kind', c.kind, 'owner_id', c.owner_id,
    'retention_ms', (extract(epoch from c.retention) * 1000)::bigint,
    'message_ttl_ms', (extract(epoch from c.message_ttl) * 1000)::bigint,
    'max_attempts', c.max_attempts,
    'visibility_timeout_ms', (extract(epoch from c.visibility_timeout) * 1000)::bigint,
    'max_payload_bytes', c.max_payload_bytes, 'metadata', c.metadata,
    'last_seq', c.last_seq, 'created_by', c.created_by, 'created_at', c.created_at)
$$;

-- Creates the channel if it does not exist; an existing channel keeps its settings, but asking
-- for a different kind is an error (AR412).
create function public.ensure_channel(
  p_agent_id text, p_name text, p_kind text default 'broadcast',
  p_retention_ms bigint default null, p_message_ttl_ms bigint default null,
  p_max_attempts integer default null, p_visibility_timeout_ms bigint default null,
  p_max_payload_bytes integer default null, p_metadata jsonb default null
) returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v public.communication_channels;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$' then
    raise exception 'invalid channel name %', coalesce(p_name, '<null>') using errcode = 'AR401',
      hint = '1-128 characters: letters, digits, _ . : / - (not starting with a symbol)';
  end if;
  if p_name ~ '^agent:' then
    raise exception 'channel names starting with agent: are agent inboxes' using errcode = 'AR401';
  end if;
  if p_kind is null or p_kind not in ('broadcast', 'queue') then
    raise exception 'invalid channel kind % (broadcast or queue)', coalesce(p_kind, '<null>')
      using errcode = 'AR400';
  end if;
  select * into v from communication_channels where name = p_name;
  if found then
    if v.kind <> p_kind then
      raise exception 'channel % is a % channel, not %', p_name, v.kind, p_kind using errcode = 'AR412';
    end if;
    return agent_runtime_private.channel_json(v);
  end if;
  insert into communication_channels as c (name, kind, retention, message_ttl, max_attempts,
                                           visibility_timeout, max_payload_bytes, metadata, created_by)
  values (
    p_name, p_kind,
    coalesce(agent_runtime_private.ms(p_retention_ms, 'retention', 1000, 315360000000), interval '1 day'),
    case when p_message_ttl_ms is null then null
         else agent_runtime_private.ms(p_message_ttl_ms, 'message ttl', 1, 315360000000) end,
    coalesce(p_max_attempts, 5),
    coalesce(agent_runtime_private.ms(p_visibility_timeout_ms, 'visibility timeout', 100, 43200000),
             interval '30 seconds'),
    coalesce(p_max_payload_bytes, 262144),
    coalesce(p_metadata, '{}'::jsonb),
    p_agent_id)
  on conflict (name) do update set name = excluded.name  -- lost a creation race: return the winner
  returning * into v;
  if v.kind <> p_kind then
    raise exception 'channel % is a % channel, not %', p_name, v.kind, p_kind using errcode = 'AR412';
  end if;
  return agent_runtime_private.channel_json(v);
exception
  when check_violation then
    raise exception 'invalid channel settings: %', sqlerrm using errcode = 'AR400';
end
$$;

create function public.list_channels() returns jsonb
language sql stable security definer set search_path = public, pg_temp as $$
  select coalesce(jsonb_agg(agent_runtime_private.channel_json(c) || jsonb_build_object(
           'subscribers', (select count(*) from channel_subscriptions s where s.channel_id = c.id),
           'ready', (select count(*) from distributed_messages m
                     where m.channel_id = c.id and m.state in ('ready', 'inflight')
                       and c.kind <> 'broadcast'),
           'dead', (select count(*) from distributed_messages m
                    where m.channel_id = c.id and m.state = 'dead'))
         order by c.name), '[]'::jsonb)
  from communication_channels c
$$;

-- Durable subscription: subscribing again keeps the cursor. p_from applies to a new broadcast
-- subscription only: 'latest' starts after the current last message, 'earliest' replays what is
-- retained.
create function public.subscribe_channel(p_agent_id text, p_channel text, p_from text default 'latest')
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_channel public.communication_channels;
  v_sub public.channel_subscriptions;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  perform agent_runtime_private.agent_exists(p_agent_id);
  if p_from is null or p_from not in ('latest', 'earliest') then
    raise exception 'p_from must be latest or earliest' using errcode = 'AR400';
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  if v_channel.kind = 'direct' and v_channel.owner_id <> p_agent_id then
    raise exception 'only agent % may consume its inbox', v_channel.owner_id using errcode = 'AR403';
  end if;
  insert into channel_subscriptions (channel_id, agent_id, cursor_seq)
  values (v_channel.id, p_agent_id, case when p_from = 'latest' then v_channel.last_seq else 0 end)
  on conflict (channel_id, agent_id) do update set updated_at = now()
  returning * into v_sub;
  return jsonb_build_object('channel', v_channel.name, 'kind', v_channel.kind,
                            'agent_id', p_agent_id, 'cursor', v_sub.cursor_seq,
                            'last_seq', v_channel.last_seq,
                            'visibility_timeout_ms', (extract(epoch from v_channel.visibility_timeout) * 1000)::bigint,
                            'max_attempts', v_channel.max_attempts);
end
$$;

create function public.unsubscribe_channel(p_agent_id text, p_channel text) returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_channel public.communication_channels;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  v_channel := agent_runtime_private.channel(p_channel);
  delete from channel_subscriptions where channel_id = v_channel.id and agent_id = p_agent_id;
  return found;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Sending
-- ---------------------------------------------------------------------------------------------

-- Sends a batch to one channel. p_messages is a JSON array of objects with 'payload' and optional
-- 'headers', 'idempotency_key', 'correlation_id', 'reply_to', 'ttl_ms', 'delay_ms'. A message whose
-- (sender, idempotency_key) was already sent is not sent again; its original id is returned with
-- duplicate = true. All or nothing: one bad message refuses the batch.
create function public.send_messages(p_agent_id text, p_channel text, p_messages jsonb)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
declare
  v_channel record;
  v_count integer;
  v_out agent_runtime_private.outgoing_message[];
  v_malformed integer;
  v_oversized integer;
  v_keys integer;
  v_result jsonb;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  -- The sender and the channel in one look-up; the errors below come in the usual order.
  select c.*, exists (select 1 from distributed_agents a where a.id = p_agent_id) as agent_known
  into v_channel
  from (select) as one left join communication_channels c on c.name = p_channel;
  if not v_channel.agent_known then
    raise exception 'unknown agent %', p_agent_id using errcode = 'AR404', hint = 'register the agent first';
  end if;
  if p_messages is null or jsonb_typeof(p_messages) <> 'array' then
    raise exception 'messages must be a JSON array' using errcode = 'AR400';
  end if;
  v_count := jsonb_array_length(p_messages);
  if v_count = 0 then
    return '[]'::jsonb;
  end if;
  if v_count > 10000 then
    raise exception 'at most 10000 messages per batch (got %)', v_count using errcode = 'AR400';
  end if;
  if v_channel.id is null then
    if p_channel ~ '^agent:' then
      raise exception 'unknown agent %', substr(p_channel, 7) using errcode = 'AR404';
    end if;
    raise exception 'unknown channel %', p_channel using errcode = 'AR405', hint = 'create it with ensure_channel';
  end if;

  -- One pass parses the batch and finds the first malformed and the first oversized message.
  begin
    select array_agg(row(p.*)::agent_runtime_private.outgoing_message order by p.ord),
           min(p.ord) filter (where p.payload is null or jsonb_typeof(p.headers) <> 'object'
             or (p.idempotency_key is not null and length(p.idempotency_key) not between 1 and 200)
             or (p.reply_to is not null and p.reply_to !~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$')),
           min(p.ord) filter (where p.size_bytes > v_channel.max_payload_bytes),
           count(p.idempotency_key)
    into v_out, v_malformed, v_oversized, v_keys
    from (select e.ord::integer as ord, e.m -> 'payload' as payload,
                 coalesce(e.m -> 'headers', '{}'::jsonb) as headers,
                 octet_length((e.m -> 'payload')::text) as size_bytes, e.m ->> 'idempotency_key' as idempotency_key,
                 (e.m ->> 'correlation_id')::uuid as correlation_id, e.m ->> 'reply_to' as reply_to,
                 case when e.m ? 'ttl_ms' then
                   agent_runtime_private.ms((e.m ->> 'ttl_ms')::bigint, 'ttl', 1, 315360000000) end as ttl,
                 case when e.m ? 'delay_ms' then
                   agent_runtime_private.ms((e.m ->> 'delay_ms')::bigint, 'delay', 0, 315360000000) end as delay,
                 null::bigint as existing_id, null::bigint as existing_seq, null::integer as dup_of
          from jsonb_array_elements(p_messages) with ordinality as e(m, ord)) p;
  exception
    when invalid_text_representation or numeric_value_out_of_range or invalid_parameter_value then
      raise exception 'malformed message: %', sqlerrm using errcode = 'AR400';
  end;
  if v_malformed is not null then
    raise exception 'malformed message #%: needs a payload; headers must be an object; idempotency_key 1-200 characters; reply_to a channel name', v_malformed
      using errcode = 'AR400';
  end if;
  if v_oversized is not null then
    raise exception 'payload of message #% is % bytes; channel % allows %', v_oversized,
      v_out[v_oversized].size_bytes, v_channel.name, v_channel.max_payload_bytes using errcode = 'AR413';
  end if;
  -- A broadcast channel delivers every message in order as soon as it is sent: a delay there would
  -- either be ignored or hold back everything after it, so it is refused (new in this migration).
  if v_channel.kind = 'broadcast' and exists (select 1 from unnest(v_out) o where o.delay > interval '0') then
    raise exception 'delay is for queue and direct channels; channel % is a broadcast channel', v_channel.name
      using errcode = 'AR400';
  end if;

  -- Taking the channel row lock serialises producers on this channel until commit, so seq order
  -- equals commit order. Everything above ran without it; what follows holds it until commit.
  if v_keys = 0 then
    with numbered as (
      update communication_channels set last_seq = last_seq + v_count
      where id = v_channel.id
      returning last_seq
    ), inserted as (
      insert into distributed_messages (channel_id, seq, sender_id, payload, headers, size_bytes,
                                        correlation_id, reply_to, expires_at, visible_at)
      select v_channel.id, n.last_seq - v_count + o.ord, p_agent_id, o.payload, o.headers,
             o.size_bytes, o.correlation_id, o.reply_to, now() + coalesce(o.ttl, v_channel.message_ttl),
             now() + coalesce(o.delay, interval '0')
      from numbered n cross join unnest(v_out) o
      returning id, seq
    )
    select jsonb_agg(jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', false) order by i.seq)
    into v_result from inserted i;
    if v_result is null then  -- the channel went away meanwhile
      raise exception 'unknown channel %', p_channel using errcode = 'AR405';
    end if;
    return v_result;
  end if;

  begin  -- (its handler makes this block a subtransaction: only batches with keys pay for one)
    -- A key this agent already sent returns the original id as a duplicate. A key repeated inside
    -- one batch is sent once: the first occurrence wins, and the later ones return its id as
    -- duplicates (one result per input message).
    select array_agg(row(
             o.ord, o.payload, o.headers, o.size_bytes, o.idempotency_key, o.correlation_id, o.reply_to,
             o.ttl, o.delay, m.id, m.seq,
             case when m.id is null and o.ord > f.first_ord then f.first_ord end
           )::agent_runtime_private.outgoing_message order by o.ord)
    into v_out
    from unnest(v_out) o
    left join distributed_messages m on m.sender_id = p_agent_id and m.idempotency_key = o.idempotency_key
    left join (select k.idempotency_key, min(k.ord) as first_ord from unnest(v_out) k
               where k.idempotency_key is not null group by k.idempotency_key) f
      on f.idempotency_key = o.idempotency_key;
    select count(*) into v_count from unnest(v_out) o where o.existing_id is null and o.dup_of is null;

    update communication_channels set last_seq = last_seq + v_count
    where id = v_channel.id
    returning last_seq into v_channel.last_seq;

    with fresh as (
      select o.*, v_channel.last_seq - v_count + row_number() over (order by o.ord) as seq
      from unnest(v_out) o where o.existing_id is null and o.dup_of is null
    ), inserted as (
      insert into distributed_messages (channel_id, seq, sender_id, payload, headers, size_bytes,
                                        correlation_id, reply_to, idempotency_key, expires_at,
                                        visible_at)
      select v_channel.id, f.seq, p_agent_id, f.payload, f.headers, f.size_bytes, f.correlation_id,
             f.reply_to, f.idempotency_key, now() + coalesce(f.ttl, v_channel.message_ttl),
             now() + coalesce(f.delay, interval '0')
      from fresh f
      returning id, seq
    )
    select jsonb_agg(r.j order by r.ord) into v_result from (
      select f.ord, jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', false) as j
      from fresh f join inserted i on i.seq = f.seq
      union all
      select o.ord, jsonb_build_object('id', o.existing_id, 'seq', o.existing_seq, 'duplicate', true)
      from unnest(v_out) o where o.existing_id is not null
      union all
      select o.ord, jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', true)
      from unnest(v_out) o join fresh f on f.ord = o.dup_of join inserted i on i.seq = f.seq
    ) r;
    return coalesce(v_result, '[]'::jsonb);
  exception
    when unique_violation then
      -- Another transaction sent the same idempotency key concurrently and committed first.
      raise exception 'idempotency key already used concurrently; retry to get the original id'
        using errcode = 'AR408';
  end;
end
$$;

create function public.send_message(
  p_agent_id text, p_channel text, p_payload jsonb, p_headers jsonb default '{}'::jsonb,
  p_idempotency_key text default null, p_correlation_id uuid default null,
  p_reply_to text default null, p_ttl_ms bigint default null, p_delay_ms bigint default null
) returns jsonb
language sql security definer set search_path = public, pg_temp as $$
  select public.send_messages(p_agent_id, p_channel, jsonb_build_array(jsonb_strip_nulls(
    jsonb_build_object('payload', p_payload, 'headers', coalesce(p_headers, '{}'::jsonb),
                       'idempotency_key', p_idempotency_key, 'correlation_id', p_correlation_id,
                       'reply_to', p_reply_to, 'ttl_ms', p_ttl_ms, 'delay_ms', p_delay_ms))
    || case when p_payload = 'null'::jsonb then jsonb_build_object('payload', 'null'::jsonb)
            else '{}'::jsonb end)) -> 0
$$;

-- ---------------------------------------------------------------------------------------------
-- Receiving
-- ---------------------------------------------------------------------------------------------

-- Broadcast: the next messages after this subscriber's cursor, in seq order, replayed dead letters
-- first. Head-of-line retry: while a nacked message waits for its retry time nothing is returned.
-- p_ack_ids (optional): acknowledge these first, in the same transaction (ack_messages), so a
-- consumer's acks ride along with its next fetch: one round trip instead of two.
create function public.fetch_messages(p_agent_id text, p_channel text, p_limit integer default 100,
                                      p_ack_ids bigint[] default null)
returns json
language plpgsql security definer set search_path = public, pg_temp set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
declare
  v_channel public.communication_channels;
  v_sub public.channel_subscriptions;
  v_replays json;
  v_messages json;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'AR400';
  end if;
  if p_ack_ids is not null then
    perform public.ack_messages(p_agent_id, p_ack_ids);
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  if v_channel.kind <> 'broadcast' then
    raise exception 'channel % is a % channel: claim its messages', p_channel, v_channel.kind
      using errcode = 'AR412';
  end if;
  select * into v_sub from channel_subscriptions where channel_id = v_channel.id and agent_id = p_agent_id;
  if not found then
    raise exception 'agent % is not subscribed to %', p_agent_id, p_channel using errcode = 'AR405',
      hint = 'subscribe first';
  end if;

  if exists (select 1 from message_dead_letters d where d.agent_id = p_agent_id and d.state = 'replaying') then
    select json_agg(agent_runtime_private.message_row(m, v_channel.name, d.attempts + 1) order by m.seq)
    into v_replays
    from message_dead_letters d
    cross join lateral (select * from distributed_messages x where x.id = d.message_id offset 0) m
    where d.agent_id = p_agent_id and d.state = 'replaying' and m.channel_id = v_channel.id;
  end if;

  if v_sub.retry_at is null or v_sub.retry_at <= clock_timestamp() then  -- (see claim_messages)
    select json_agg(agent_runtime_private.message_row(
             m, v_channel.name, case when m.seq = v_sub.retry_seq then v_sub.retry_attempts + 1 else 1 end)
           order by m.seq)
    into v_messages
    from (select * from distributed_messages
          where channel_id = v_channel.id and seq > v_sub.cursor_seq
            and (expires_at is null or expires_at > now())
          order by seq limit p_limit) m;
  end if;
  if v_replays is null then
    return coalesce(v_messages, '[]'::json);
  elsif v_messages is null then
    return v_replays;
  end if;
  return (v_replays::jsonb || v_messages::jsonb)::json;
end
$$;

-- claim_messages (and fetch_messages, for a retry) compare visible_at with the clock read while
-- they run (clock_timestamp()), not with now().
--
-- now() is the claiming transaction's start time, and it may be earlier than the start of a sender
-- whose commit the claim's snapshot already sees: a claim made right after a wake-up then skipped
-- the message it was woken for (visible_at, the sender's now(), looked a few milliseconds in the
-- future), and since that wake-up was the only one, the message waited for the next safety poll.
-- Seen in tests/failure/test_bad_input_api.py: a claim whose now() was 9 ms before the sender's
-- visible_at, with statement_timestamp() and clock_timestamp() after it and the sender's xid
-- committed in its snapshot. The same holds for a nack with no delay (visible_at is the nacker's
-- now()). clock_timestamp() in the statement is read after its snapshot was taken, so after every
-- commit it sees, and so after the start of every sender it sees.
--
-- Queue and inbox: claims up to p_limit visible messages in seq order for p_visibility_ms.
-- A claimed message whose visibility timed out is claimable again; one that has used up its
-- attempts goes to the dead letters instead. SKIP LOCKED: concurrent consumers never get the same
-- message and never wait on each other.
-- p_ack_ids (optional): acknowledge these first, in the same transaction, as fetch_messages does.
create function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
                                      p_visibility_ms bigint default null, p_ack_ids bigint[] default null)
returns json
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_channel public.communication_channels;
  v_visibility interval;
  v_result json;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'AR400';
  end if;
  if p_ack_ids is not null then
    perform public.ack_messages(p_agent_id, p_ack_ids);
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  if v_channel.kind = 'broadcast' then
    raise exception 'channel % is a broadcast channel: fetch its messages', p_channel using errcode = 'AR412';
  end if;
  if v_channel.kind = 'direct' and v_channel.owner_id <> p_agent_id then
    raise exception 'only agent % may consume its inbox', v_channel.owner_id using errcode = 'AR403';
  end if;
  v_visibility := coalesce(agent_runtime_private.ms(p_visibility_ms, 'visibility timeout', 100, 43200000),
                           v_channel.visibility_timeout);

  -- Timed-out claims that used up their attempts die here, before anyone can claim them again.
  update distributed_messages set state = 'dead', last_error = coalesce(last_error, 'visibility timeout'),
                                  claimed_by = null
  where channel_id = v_channel.id and state = 'inflight' and visible_at <= clock_timestamp()
    and attempts >= v_channel.max_attempts;

  with picked as (
    select id from distributed_messages
    where channel_id = v_channel.id and state in ('ready', 'inflight') and visible_at <= clock_timestamp()
      and (expires_at is null or expires_at > now())
    order by seq
    limit p_limit
    for update skip locked
  ), claimed as (
    update distributed_messages m set state = 'inflight', attempts = m.attempts + 1,
                                      claimed_by = p_agent_id, visible_at = now() + v_visibility
    from picked where m.id = picked.id
    returning m as msg, m.seq as seq, m.attempts as attempts
  )
  select json_agg(agent_runtime_private.message_row(c.msg, v_channel.name, c.attempts) order by c.seq)
  into v_result from claimed c;
  return coalesce(v_result, '[]'::json);
end
$$;

-- Acknowledges messages this agent received. Queue/inbox: only the current claimant's ack counts
-- (a stale ack after the message was handed to someone else is ignored). Broadcast: the ack is
-- cumulative, it moves the subscriber's cursor to the highest acked seq of that channel, and it
-- resolves replayed dead letters. Returns the number of messages acknowledged.
-- (As before; the queue update, and its statement trigger, run only when one of the messages is
-- in flight for this agent, which a broadcast message never is.)
create function public.ack_messages(p_agent_id text, p_message_ids bigint[]) returns integer
language plpgsql security definer set search_path = public, pg_temp set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
declare
  v_acked integer := 0;
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_message_ids is null or cardinality(p_message_ids) > 10000 then
    raise exception 'message ids must be an array of at most 10000' using errcode = 'AR400';
  end if;

  -- (coalesce: a plan cached when the table was small must not scan the claim index instead of
  -- looking the ids up)
  if exists (select 1 from distributed_messages m
             where m.id = any (p_message_ids) and coalesce(m.state, '') = 'inflight'
               and m.claimed_by = p_agent_id) then
    update distributed_messages m set state = 'acked', acked_at = now(), claimed_by = p_agent_id
    from communication_channels c
    where m.id = any (p_message_ids) and c.id = m.channel_id and c.kind <> 'broadcast'
      and coalesce(m.state, '') = 'inflight' and m.claimed_by = p_agent_id;
    get diagnostics v_acked = row_count;
  end if;

  with acked as (
    select m.channel_id, max(m.seq) as seq, count(*) as n
    from distributed_messages m join communication_channels c on c.id = m.channel_id
    where m.id = any (p_message_ids) and c.kind = 'broadcast'
    group by m.channel_id
  ), moved as (
    update channel_subscriptions s set
      cursor_seq = greatest(s.cursor_seq, a.seq),
      retry_seq = case when s.retry_seq <= a.seq then null else s.retry_seq end,
      retry_attempts = case when s.retry_seq <= a.seq then 0 else s.retry_attempts end,
      retry_at = case when s.retry_seq <= a.seq then null else s.retry_at end,
      updated_at = now()
    from acked a
    where s.channel_id = a.channel_id and s.agent_id = p_agent_id
    returning a.n
  )
  select coalesce(sum(n), 0) into v_n from moved;
  v_acked := v_acked + v_n;

  update message_dead_letters set state = 'resolved'
  where agent_id = p_agent_id and message_id = any (p_message_ids) and state = 'replaying';
  return v_acked;
end
$$;

-- Negative acknowledgement: the message is redelivered after p_delay_ms, or goes to the dead
-- letters once it has used the channel's max attempts (or at once with p_dead => true, for a
-- payload that can never be processed). Returns {state: 'retry'|'dead'|'ignored', attempts,
-- retry_at}. 'ignored' means this agent no longer holds the message. p_release => true hands back
-- a queue/inbox message that was claimed but never handed to a handler (a consumer closing with
-- a prefetched batch): the claim does not count as an attempt, so it can never dead-letter it.
create function public.nack_message(p_agent_id text, p_message_id bigint, p_delay_ms bigint default 0,
                                    p_reason text default null, p_dead boolean default false,
                                    p_release boolean default false)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_delay interval := coalesce(agent_runtime_private.ms(p_delay_ms, 'delay', 0, 86400000), interval '0');
  v_reason text := left(p_reason, 2000);
  v_msg public.distributed_messages;
  v_channel public.communication_channels;
  v_sub public.channel_subscriptions;
  v_dead public.message_dead_letters;
  v_attempts integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  -- Locked: a claim by another consumer committing meanwhile is seen (and the nack ignored), not
  -- overwritten by this late nack.
  select * into v_msg from distributed_messages where id = p_message_id for update;
  if not found then
    raise exception 'unknown message %', p_message_id using errcode = 'AR406';
  end if;
  select * into v_channel from communication_channels where id = v_msg.channel_id;

  if v_channel.kind <> 'broadcast' then
    if v_msg.state <> 'inflight' or v_msg.claimed_by is distinct from p_agent_id then
      return jsonb_build_object('state', 'ignored', 'attempts', v_msg.attempts);
    end if;
    if p_release and not p_dead then
      update distributed_messages set state = 'ready', claimed_by = null,
                                      attempts = greatest(attempts - 1, 0), visible_at = now() + v_delay
      where id = p_message_id returning * into v_msg;
      return jsonb_build_object('state', 'retry', 'attempts', v_msg.attempts, 'retry_at', v_msg.visible_at);
    end if;
    if p_dead or v_msg.attempts >= v_channel.max_attempts then
      update distributed_messages set state = 'dead', last_error = v_reason, claimed_by = null
      where id = p_message_id;
      return jsonb_build_object('state', 'dead', 'attempts', v_msg.attempts);
    end if;
    update distributed_messages set state = 'ready', claimed_by = null, last_error = v_reason,
                                    visible_at = now() + v_delay
    where id = p_message_id returning * into v_msg;
    return jsonb_build_object('state', 'retry', 'attempts', v_msg.attempts, 'retry_at', v_msg.visible_at);
  end if;

  -- Broadcast: a replayed dead letter failing again goes straight back to dead.
  select * into v_dead from message_dead_letters
  where message_id = p_message_id and agent_id = p_agent_id and state = 'replaying';
  if found then
    update message_dead_letters set state = 'dead', attempts = attempts + 1, reason = v_reason,
                                    dead_at = now()
    where id = v_dead.id;
    return jsonb_build_object('state', 'dead', 'attempts', v_dead.attempts + 1);
  end if;

  select * into v_sub from channel_subscriptions
  where channel_id = v_channel.id and agent_id = p_agent_id for update;
  if not found or v_msg.seq <= v_sub.cursor_seq then
    return jsonb_build_object('state', 'ignored', 'attempts', 0);
  end if;
  v_attempts := case when v_sub.retry_seq = v_msg.seq then v_sub.retry_attempts + 1 else 1 end;
  if p_dead or v_attempts >= v_channel.max_attempts then
    insert into message_dead_letters (message_id, agent_id, attempts, reason)
    values (p_message_id, p_agent_id, v_attempts, v_reason)
    on conflict (message_id, agent_id) do update set state = 'dead', attempts = excluded.attempts,
      reason = excluded.reason, dead_at = now();
    -- Skip past the dead message (everything before it was delivered in order).
    update channel_subscriptions set cursor_seq = v_msg.seq, retry_seq = null, retry_attempts = 0,
                                     retry_at = null, updated_at = now()
    where channel_id = v_channel.id and agent_id = p_agent_id;
    return jsonb_build_object('state', 'dead', 'attempts', v_attempts);
  end if;
  -- Rewind to just before the nacked message: it and everything after are delivered again.
  update channel_subscriptions set cursor_seq = v_msg.seq - 1, retry_seq = v_msg.seq,
                                   retry_attempts = v_attempts, retry_at = now() + v_delay,
                                   updated_at = now()
  where channel_id = v_channel.id and agent_id = p_agent_id;
  return jsonb_build_object('state', 'retry', 'attempts', v_attempts, 'retry_at', now() + v_delay);
end
$$;

-- Extends the visibility of messages this agent holds (a long handler keeps its claim).
create function public.extend_visibility(p_agent_id text, p_message_ids bigint[], p_visibility_ms bigint)
returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  update distributed_messages
  set visible_at = now() + agent_runtime_private.ms(p_visibility_ms, 'visibility timeout', 100, 43200000)
  where id = any (p_message_ids) and state = 'inflight' and claimed_by = p_agent_id;
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

-- Dead letters of queues/inboxes (state on the message) and of broadcast subscribers (one row per
-- subscriber), newest first.
create function public.list_dead_letters(p_channel text default null, p_limit integer default 100)
returns jsonb
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
  v_channel_id bigint;
  v_result jsonb;
begin
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'AR400';
  end if;
  if p_channel is not null then
    v_channel_id := (agent_runtime_private.channel(p_channel)).id;
  end if;
  select coalesce(jsonb_agg(x.j order by x.dead_at desc, x.id desc), '[]'::jsonb) into v_result from (
    select d.* from (
      select m.id, m.created_at as dead_at,
             agent_runtime_private.message_json(m, c.name, m.attempts)
             || jsonb_build_object('dead_letter_id', null, 'subscriber_id', null,
                                   'reason', m.last_error) as j
      from distributed_messages m join communication_channels c on c.id = m.channel_id
      where m.state = 'dead' and (v_channel_id is null or m.channel_id = v_channel_id)
        -- An agent token never sees another agent's inbox (payloads included).
        and (c.kind <> 'direct' or c.owner_id = agent_runtime_private.jwt_agent_id()
             or agent_runtime_private.is_trusted())
      union all
      select m.id, dl.dead_at,
             agent_runtime_private.message_json(m, c.name, dl.attempts)
             || jsonb_build_object('dead_letter_id', dl.id, 'subscriber_id', dl.agent_id,
                                   'reason', dl.reason)
      from message_dead_letters dl
      join distributed_messages m on m.id = dl.message_id
      join communication_channels c on c.id = m.channel_id
      where dl.state = 'dead' and (v_channel_id is null or m.channel_id = v_channel_id)
    ) d order by d.dead_at desc, d.id desc limit p_limit
  ) x;
  return v_result;
end
$$;

-- Replays dead letters by message id: a queue message becomes ready again with fresh attempts;
-- a broadcast dead letter is delivered again to the subscriber it died for. Returns the count.
create function public.replay_dead_letters(p_agent_id text, p_message_ids bigint[]) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
  v_m integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_message_ids is null or cardinality(p_message_ids) > 10000 then
    raise exception 'message ids must be an array of at most 10000' using errcode = 'AR400';
  end if;
  -- An agent token replays only what it could consume: its inbox, queues it subscribes to, and
  -- its own broadcast dead letters. Trusted callers (operators, the CLI) replay anything.
  update distributed_messages m set state = 'ready', attempts = 0, visible_at = now(), claimed_by = null,
                                    expires_at = case when expires_at <= now() then null else expires_at end
  where m.id = any (p_message_ids) and m.state = 'dead'
    and (agent_runtime_private.is_trusted() or exists (
      select 1 from communication_channels c where c.id = m.channel_id and (c.owner_id = p_agent_id
        or exists (select 1 from channel_subscriptions s
                   where s.channel_id = c.id and s.agent_id = p_agent_id))));
  get diagnostics v_n = row_count;
  update message_dead_letters set state = 'replaying', replayed_at = now()
  where message_id = any (p_message_ids) and state = 'dead'
    and (agent_runtime_private.is_trusted() or agent_id = p_agent_id);
  get diagnostics v_m = row_count;
  return v_n + v_m;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Locks
-- ---------------------------------------------------------------------------------------------

create function agent_runtime_private.lock_json(l public.distributed_locks, p_acquired boolean)
returns jsonb language sql stable as $$
  select jsonb_build_object('key', l.key, 'acquired', p_acquired, 'owner_id', l.owner_id,
                            'lease_id', case when p_acquired then l.lease_id end,
                            'token', case when p_acquired then l.token end,
                            'acquired_at', l.acquired_at, 'expires_at', l.expires_at,
                            'ttl_ms', greatest(0, (extract(epoch from l.expires_at - now()) * 1000)::bigint))
$$;

-- Takes the lease on p_key if it is free or expired (or already held by this same lease, which
-- extends it). Every new holder gets a fresh fencing token from a global sequence, so tokens
-- strictly increase per key across owners. Returns {acquired, token, expires_at, owner_id, ttl_ms};
-- when not acquired, ttl_ms says how long the current holder's lease still runs.
create function public.acquire_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint,
                                    p_metadata jsonb default '{}'::jsonb)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_ttl interval := agent_runtime_private.ms(p_ttl_ms, 'lock ttl', 100, 86400000);
  v_lock public.distributed_locks;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  perform agent_runtime_private.agent_exists(p_agent_id);
  if v_ttl is null or p_lease_id is null then
    raise exception 'lock ttl and lease id are required' using errcode = 'AR400';
  end if;
  if p_key is null or char_length(p_key) not between 1 and 256 or p_key ~ '[[:cntrl:]]' then
    raise exception 'invalid lock key: 1-256 printable characters' using errcode = 'AR401';
  end if;
  -- Held by another live lease: answer without writing, so a refused try takes no row lock and
  -- costs no commit flush (waiters retry often when many want one key).
  select * into v_lock from distributed_locks where key = p_key;
  if found and v_lock.expires_at > now() and not (v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id) then
    return agent_runtime_private.lock_json(v_lock, false);
  end if;
  insert into distributed_locks as l (key, owner_id, lease_id, token, expires_at, metadata)
  values (p_key, p_agent_id, p_lease_id, nextval('distributed_locks_token_seq'), now() + v_ttl,
          coalesce(p_metadata, '{}'::jsonb))
  on conflict (key) do update set
    owner_id = excluded.owner_id, lease_id = excluded.lease_id,
    token = case when l.lease_id = excluded.lease_id and l.owner_id = excluded.owner_id
                      and l.expires_at > now() then l.token
                 else excluded.token end,
    acquired_at = case when l.lease_id = excluded.lease_id and l.owner_id = excluded.owner_id
                            and l.expires_at > now() then l.acquired_at
                       else now() end,
    renewed_at = now(), expires_at = excluded.expires_at, metadata = excluded.metadata
  -- The same lease extends only for its own owner: another agent presenting it takes nothing.
  where l.expires_at <= now() or (l.lease_id = excluded.lease_id and l.owner_id = excluded.owner_id)
  returning * into v_lock;
  if found then
    return agent_runtime_private.lock_json(v_lock, true);
  end if;
  select * into v_lock from distributed_locks where key = p_key;
  return agent_runtime_private.lock_json(v_lock, false);
end
$$;

-- Extends a held lease. Raises AR409 if this lease does not hold the key (never held, released,
-- expired, or taken over): the holder must stop acting as owner.
create function public.renew_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_ttl interval := agent_runtime_private.ms(p_ttl_ms, 'lock ttl', 100, 86400000);
  v_lock public.distributed_locks;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  update distributed_locks set expires_at = now() + v_ttl, renewed_at = now()
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id and expires_at > now()
  returning * into v_lock;
  if not found then
    raise exception 'lock % is not held by this lease (expired, released or taken over)', p_key
      using errcode = 'AR409';
  end if;
  return agent_runtime_private.lock_json(v_lock, true);
end
$$;

-- Releases a held lease; returns false if it was not held (already expired or taken over).
create function public.release_lock(p_agent_id text, p_key text, p_lease_id uuid) returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  delete from distributed_locks
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id and expires_at > now();
  return found;
end
$$;

-- Fencing check for a protected write: raises AR422 unless p_token is the live holder's token.
-- Call it in the same transaction as the write it guards. The lock row is share-locked until that
-- transaction ends, so no one can take the lease over between the check and the write's commit
-- (a successor's acquire waits for it): writes never go back to an older token. Volatile, as it locks.
create function public.check_fencing_token(p_key text, p_token bigint) returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  perform 1 from distributed_locks
  where key = p_key and token = p_token and expires_at > now()
  for share;
  if not found then
    raise exception 'fencing token % is not the current holder''s token for %', p_token, p_key
      using errcode = 'AR422';
  end if;
  return true;
end
$$;

create function public.list_locks() returns jsonb
language sql stable security definer set search_path = public, pg_temp as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'key', key, 'owner_id', owner_id, 'token', token, 'acquired_at', acquired_at,
           'expires_at', expires_at, 'metadata', metadata) order by key), '[]'::jsonb)
  from distributed_locks where expires_at > now()
$$;

-- ---------------------------------------------------------------------------------------------
-- Metrics
-- ---------------------------------------------------------------------------------------------

-- Records a batch of aggregated figures into one-minute buckets (by the database clock):
-- p_metrics is a JSON array of {metric, channel?, count, sum, min?, max?}. Returns rows written.
create function public.record_communication_metrics(p_agent_id text, p_metrics jsonb) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  perform agent_runtime_private.agent_exists(p_agent_id);
  if p_metrics is null or jsonb_typeof(p_metrics) <> 'array' or jsonb_array_length(p_metrics) > 10000 then
    raise exception 'metrics must be a JSON array of at most 10000 entries' using errcode = 'AR400';
  end if;
  begin
    insert into communication_metrics as cm (agent_id, channel, metric, bucket, count, sum, min, max)
    select p_agent_id, coalesce(e ->> 'channel', ''), e ->> 'metric',
           date_bin(interval '1 minute', now(), timestamptz '2000-01-01'),
           sum(coalesce((e ->> 'count')::bigint, 1)), sum(coalesce((e ->> 'sum')::double precision, 0)),
           min((e ->> 'min')::double precision), max((e ->> 'max')::double precision)
    from jsonb_array_elements(p_metrics) e
    group by 1, 2, 3, 4
    on conflict (agent_id, channel, metric, bucket) do update set
      count = cm.count + excluded.count, sum = cm.sum + excluded.sum,
      min = least(cm.min, excluded.min), max = greatest(cm.max, excluded.max);
    get diagnostics v_n = row_count;
  exception
    when not_null_violation or check_violation or invalid_text_representation
         or numeric_value_out_of_range or wrong_object_type then
      raise exception 'malformed metric: %', sqlerrm using errcode = 'AR400',
        hint = 'each entry needs a metric name (lowercase, digits, _ .) and numeric count/sum/min/max';
  end;
  return v_n;
end
$$;

-- Reads metrics back, summed over buckets since p_since_ms ago.
create function public.get_communication_metrics(p_agent_id text default null, p_metric text default null,
                                                 p_since_ms bigint default 3600000)
returns jsonb
language sql stable security definer set search_path = public, pg_temp as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'agent_id', agent_id, 'channel', channel, 'metric', metric, 'count', count, 'sum', sum,
           'min', min, 'max', max, 'mean', case when count > 0 then sum / count end,
           'first_bucket', first_bucket, 'last_bucket', last_bucket)
         order by agent_id, channel, metric), '[]'::jsonb)
  from (
    select agent_id, channel, metric, sum(count)::bigint as count, sum(sum) as sum, min(min) as min,
           max(max) as max, min(bucket) as first_bucket, max(bucket) as last_bucket
    from communication_metrics
    where (p_agent_id is null or agent_id = p_agent_id) and (p_metric is null or metric = p_metric)
      and bucket >= date_bin(interval '1 minute',
                             now() - coalesce(p_since_ms, 3600000) * interval '1 millisecond',
                             timestamptz '2000-01-01')
    group by agent_id, channel, metric
  ) s
$$;

-- ---------------------------------------------------------------------------------------------
-- Cleanup (the janitor calls these; each is safe to run concurrently and bounded per call)
-- ---------------------------------------------------------------------------------------------

create function public.cleanup_expired_messages(p_limit integer default 10000) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  delete from distributed_messages where id in (
    select m.id from distributed_messages m join communication_channels c on c.id = m.channel_id
    where (m.expires_at <= now() and m.state <> 'dead')
       or m.created_at < now() - c.retention
       or (m.state = 'acked' and m.acked_at < now() - least(c.retention, interval '1 hour'))
    limit p_limit
    for update of m skip locked);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

create function public.cleanup_expired_locks() returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  delete from distributed_locks where expires_at <= now();
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

-- Marks agents whose heartbeat lapsed as offline, which emits their leave event.
create function public.cleanup_stale_presence() returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  update agent_presence set status = 'offline', changed_at = now()
  where status <> 'offline' and expires_at <= now();
  get diagnostics v_n = row_count;
  update distributed_agents a set status = 'offline'
  from agent_presence p where p.agent_id = a.id and p.status = 'offline' and a.status <> 'offline';
  return v_n;
end
$$;

create function public.cleanup_old_metrics(p_older_than_ms bigint default 604800000) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  delete from communication_metrics
  where bucket < now() - agent_runtime_private.ms(p_older_than_ms, 'metrics retention', 60000, 315360000000);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

create function public.run_cleanup(p_metrics_retention_ms bigint default 604800000) returns jsonb
language sql security definer set search_path = public, pg_temp as $$
  select jsonb_build_object(
    'stale_presence', public.cleanup_stale_presence(),
    'expired_locks', public.cleanup_expired_locks(),
    'expired_messages', public.cleanup_expired_messages(),
    'old_metrics', public.cleanup_old_metrics(p_metrics_retention_ms))
$$;

-- ---------------------------------------------------------------------------------------------
-- Topology
-- ---------------------------------------------------------------------------------------------

-- One document: agents with presence, channels, subscriptions (edges), recent flows (sender ->
-- channel over the last p_window_ms) and held locks. p_include_offline adds agents that left.
-- Orders: agents by id, channels by name, subscriptions by channel name then agent id, flows
-- busiest first (then by channel and sender, so that ties come out in one order), locks by key;
-- names bytewise (collate "C": they are ASCII).
-- Built as json, not jsonb: at 10,000 agents the document is megabytes, and jsonb would build
-- every object as a tree. See the top of this file for how it is kept fast.
-- (The row types above are the objects' keys: changing a key means changing its type.)
create function public.get_network_topology(p_window_ms bigint default 300000,
                                                       p_include_offline boolean default false)
returns json
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
  v_agents agent_runtime_private.topology_agent[];
  v_channels agent_runtime_private.topology_channel[];
  v_subscriptions agent_runtime_private.topology_subscription[];
  v_flows agent_runtime_private.topology_flow[];
  -- Computed once: in a filter, now() - interval is a stable expression evaluated for every row.
  v_since timestamptz := now() - coalesce(p_window_ms, 300000) * interval '1 millisecond';
begin
  select array_agg(agent_runtime_private.agent_row(a, p) order by a.id collate "C")
  into v_agents
  from distributed_agents a left join agent_presence p on p.agent_id = a.id
  where p_include_offline or (p.status <> 'offline' and p.expires_at > now());

  select array_agg(row(c.name, c.kind, c.owner_id, c.last_seq)::agent_runtime_private.topology_channel
                   order by c.name collate "C")
  into v_channels
  from communication_channels c
  where c.kind <> 'direct' or p_include_offline or exists (
    select 1 from agent_presence p
    where p.agent_id = c.owner_id and p.status <> 'offline' and p.expires_at > now());

  select array_agg(row(s.agent_id, c.name, s.cursor_seq,
                       case when c.kind = 'broadcast' then c.last_seq - s.cursor_seq end
                   )::agent_runtime_private.topology_subscription
                   order by c.name_rank, s.agent_id collate "C")
  into v_subscriptions
  from channel_subscriptions s
  join (select c.id, c.name, c.kind, c.last_seq, row_number() over (order by c.name collate "C") as name_rank
        from communication_channels c where c.kind <> 'direct') c on c.id = s.channel_id
  join agent_presence p on p.agent_id = s.agent_id
  where p_include_offline or (p.status <> 'offline' and p.expires_at > now());

  select array_agg(row(f.sender_id, c.name, c.owner_id, f.n, f.bytes, f.last_at)::agent_runtime_private.topology_flow
                   order by f.n desc, c.name collate "C", f.sender_id collate "C")
  into v_flows
  from (select channel_id, sender_id, count(*) as n, sum(size_bytes) as bytes, max(created_at) as last_at
        from distributed_messages
        where created_at > v_since
        group by channel_id, sender_id) f
  join communication_channels c on c.id = f.channel_id;

  return json_build_object(
    'generated_at', now(),
    'window_ms', p_window_ms,
    'agents', coalesce(v_agents, '{}'),
    'channels', coalesce(v_channels, '{}'),
    'subscriptions', coalesce(v_subscriptions, '{}'),
    'flows', coalesce(v_flows, '{}'),
    'locks', public.list_locks());
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Wake-ups: compact hints, coalesced per statement and channel, delivered after commit.
-- ---------------------------------------------------------------------------------------------

create function agent_runtime_private.notify(p_topic text, p_event text, p_payload jsonb) returns void
language plpgsql as $$
begin
  perform pg_notify('agent_runtime', (p_payload || jsonb_build_object('t', p_topic, 'e', p_event))::text);
  -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
  -- realtime.messages). realtime.send never raises.
  perform realtime.send(p_payload, p_event, p_topic, true);
end
$$;

-- New messages: one wake-up per statement and channel, delivered after commit. On a broadcast
-- channel it carries the messages themselves when they are few, small and visible now (see the
-- top of this file); otherwise, and on queues and inboxes, it is the bare hint {c, s}.
create function agent_runtime_private.on_messages_inserted() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  r record;
  v_topic text;
  v_messages json;
  v_note text;
begin
  for r in
    select c.id, c.name, c.kind, min(n.seq) as first_seq, max(n.seq) as seq, count(*) as n,
           bool_and(n.visible_at <= now()) as visible, sum(n.size_bytes) as payload_bytes
    from new_rows n join communication_channels c on c.id = n.channel_id
    group by c.id, c.name, c.kind
  loop
    v_topic := case when r.kind = 'direct' then r.name else 'channel:' || r.name end;
    v_messages := null;
    if r.kind = 'broadcast' and r.visible and r.n <= 16 and r.seq - r.first_seq + 1 = r.n
       and r.payload_bytes < 6000 then
      select json_agg(agent_runtime_private.message_row(n, r.name, 1) order by n.seq)
      into v_messages
      from new_rows n where n.channel_id = r.id;
      if octet_length(v_messages::text) >= 6000 then
        v_messages := null;  -- (headers count too)
      end if;
    end if;
    if v_messages is null then
      perform pg_notify('agent_runtime', json_build_object('c', r.name, 's', r.seq, 't', v_topic,
                                                           'e', 'message')::text);
      perform realtime.send(jsonb_build_object('c', r.name, 's', r.seq), 'message', v_topic, true);
    else
      v_note := json_build_object('c', r.name, 's', r.seq, 'f', r.first_seq, 'm', v_messages)::text;
      perform pg_notify('agent_runtime', left(v_note, -1) || ',"t":' || to_json(v_topic)::text
                                         || ',"e":"message"}');
      -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
      -- realtime.messages: only the channel's subscribers hear it). realtime.send never raises.
      perform realtime.send(v_note::jsonb, 'message', v_topic, true);
    end if;
  end loop;
  return null;
end
$$;
create trigger distributed_messages_notify after insert on public.distributed_messages
  referencing new table as new_rows for each statement
  execute function agent_runtime_private.on_messages_inserted();

-- A nack with no delay or a replay makes messages visible again: wake consumers.
create function agent_runtime_private.on_messages_ready() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  r record;
begin
  for r in
    select c.name, c.kind, max(n.seq) as seq
    from new_rows n join old_rows o on o.id = n.id
    join communication_channels c on c.id = n.channel_id
    where n.state = 'ready' and o.state <> 'ready'
    group by c.name, c.kind
  loop
    perform agent_runtime_private.notify(
      case when r.kind = 'direct' then r.name else 'channel:' || r.name end,
      'message', jsonb_build_object('c', r.name, 's', r.seq));
  end loop;
  return null;
end
$$;
create trigger distributed_messages_ready_notify after update on public.distributed_messages
  referencing new table as new_rows old table as old_rows for each statement
  execute function agent_runtime_private.on_messages_ready();

create function agent_runtime_private.on_presence_changed() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_event text;
begin
  if tg_op = 'INSERT' then
    v_event := 'join';
  elsif new.status = 'offline' and old.status <> 'offline' then
    v_event := 'leave';
  elsif old.status = 'offline' and new.status <> 'offline' then
    v_event := 'join';
  elsif new.status is distinct from old.status then
    v_event := 'status';
  else
    return null;  -- a plain heartbeat is not an event
  end if;
  perform agent_runtime_private.notify('presence', 'presence',
    jsonb_build_object('a', new.agent_id, 'k', v_event, 'st', new.status));
  return null;
end
$$;
create trigger agent_presence_notify after insert or update of status on public.agent_presence
  for each row execute function agent_runtime_private.on_presence_changed();

create function agent_runtime_private.on_lock_released() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  perform agent_runtime_private.notify('locks', 'released', jsonb_build_object('k', old.key));
  return null;
end
$$;
create trigger distributed_locks_notify after delete on public.distributed_locks
  for each row execute function agent_runtime_private.on_lock_released();

-- ---------------------------------------------------------------------------------------------
-- Row level security and grants
-- ---------------------------------------------------------------------------------------------
-- Writes go through the functions above (security definer, which check who acts). Direct table
-- access is read-only and limited to what an agent may see.

alter table public.distributed_agents enable row level security;
alter table public.agent_presence enable row level security;
alter table public.communication_channels enable row level security;
alter table public.channel_subscriptions enable row level security;
alter table public.distributed_messages enable row level security;
alter table public.message_dead_letters enable row level security;
alter table public.distributed_locks enable row level security;
alter table public.communication_metrics enable row level security;

create function agent_runtime_private.jwt_agent_id() returns text
language sql stable as $$
  select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'agent_id'
$$;

create policy agents_read on public.distributed_agents for select to authenticated using (true);
create policy presence_read on public.agent_presence for select to authenticated using (true);
create policy channels_read on public.communication_channels for select to authenticated
  using (kind <> 'direct' or owner_id = (select agent_runtime_private.jwt_agent_id()));
create policy subscriptions_read_own on public.channel_subscriptions for select to authenticated
  using (agent_id = (select agent_runtime_private.jwt_agent_id()));
create policy messages_read_own_channels on public.distributed_messages for select to authenticated
  using (exists (
    select 1 from public.communication_channels c
    where c.id = channel_id and (c.owner_id = (select agent_runtime_private.jwt_agent_id())
      or exists (select 1 from public.channel_subscriptions s
                 where s.channel_id = c.id and s.agent_id = (select agent_runtime_private.jwt_agent_id())))));
create policy dead_letters_read_own on public.message_dead_letters for select to authenticated
  using (agent_id = (select agent_runtime_private.jwt_agent_id()));
create policy locks_read on public.distributed_locks for select to authenticated using (true);
create policy metrics_read_own on public.communication_metrics for select to authenticated
  using (agent_id = (select agent_runtime_private.jwt_agent_id()));

-- Private Realtime topics: an agent reads its own inbox topic, the topics of channels it is
-- subscribed to, and presence; it may publish only on its own topic and presence.
create policy agent_runtime_topics_read on realtime.messages for select to authenticated
  using (
    (select realtime.topic()) = 'agent:' || (select agent_runtime_private.jwt_agent_id())
    or (select realtime.topic()) in ('presence', 'locks')
    or exists (
      select 1 from public.channel_subscriptions s join public.communication_channels c on c.id = s.channel_id
      where 'channel:' || c.name = (select realtime.topic())
        and s.agent_id = (select agent_runtime_private.jwt_agent_id())));
create policy agent_runtime_topics_write on realtime.messages for insert to authenticated
  with check (
    (select realtime.topic()) = 'agent:' || (select agent_runtime_private.jwt_agent_id())
    or ((select realtime.topic()) = 'presence' and extension = 'presence'));

grant usage on schema public to anon, authenticated, service_role;
grant usage on schema agent_runtime_private to authenticated, service_role;
grant execute on all functions in schema agent_runtime_private to authenticated, service_role;
grant select on public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to authenticated;
grant all on public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to service_role;
grant usage on sequence public.distributed_locks_token_seq to service_role;

-- Our functions are callable by signed-in agents and the service role, never anonymously.
-- (Only ours: other functions in the project's public schema are left as they are.)
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'public'::regnamespace and p.proname = any (array[
      'register_agent', 'update_agent_last_seen', 'set_agent_status', 'deregister_agent',
      'list_agents', 'ensure_channel', 'list_channels', 'subscribe_channel', 'unsubscribe_channel',
      'send_messages', 'send_message', 'fetch_messages', 'claim_messages', 'ack_messages',
      'nack_message', 'extend_visibility', 'list_dead_letters', 'replay_dead_letters',
      'acquire_lock', 'renew_lock', 'release_lock', 'check_fencing_token', 'list_locks',
      'record_communication_metrics', 'get_communication_metrics', 'cleanup_expired_messages',
      'cleanup_expired_locks', 'cleanup_stale_presence', 'cleanup_old_metrics', 'run_cleanup',
      'get_network_topology'])
  loop
    execute format('revoke execute on function %s from public, anon', f);
    execute format('grant execute on function %s to authenticated, service_role', f);
  end loop;
end
$$;

-- agent_runtime declared schema, part 10: the registry and presence.
-- Owns: distributed_agents, agent_presence; type topology_agent (an agent's document); agent_exists;
-- view agent_documents; register_agent, update_agent_last_seen (the heartbeat), set_agent_status,
-- deregister_agent, list_agents.

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

create type agent_runtime_private.topology_agent as (
  id text, name text, kind text, capabilities text[], version text, host text, pid integer,
  metadata jsonb, status text, load real, online boolean, started_at timestamptz,
  last_seen timestamptz, heartbeat_at timestamptz, expires_at timestamptz, incarnation integer
);

-- agent_exists(p_agent) -> void: returns when agent p_agent is registered.
-- Raises: AR404 unknown agent.
create function agent_runtime_private.agent_exists(p_agent text) returns void
language plpgsql stable set search_path = '' as $$
begin
  if not exists (select 1 from public.distributed_agents where id = p_agent) then
    raise exception 'unknown agent %', p_agent using errcode = 'AR404',
      hint = 'register the agent first';
  end if;
end
$$;
revoke all on function agent_runtime_private.agent_exists(text) from public, anon, authenticated, service_role;

-- agent_documents: every agent with its presence (an agent without a presence row is offline) and
-- its document, one topology_agent row whose status and online are computed from the expiry by the
-- database clock. The one definition of what an agent looks like: the registry functions,
-- list_agents and the topology all read it. A view rather than a function: the planner inlines it
-- into each query (it would not inline a function with a pinned search_path, and calling one per
-- agent made listing 10,000 agents several times slower), and a view's names are resolved once,
-- when it is created.
create view agent_runtime_private.agent_documents as
  select a.id, a.capabilities, p.status as presence_status, p.expires_at as presence_expires_at,
         row(a.id, a.name, a.kind, a.capabilities, a.version, a.host, a.pid, a.metadata,
             case when p.expires_at is null or p.expires_at <= (select agent_runtime_private.clock()) then 'offline' else p.status end,
             coalesce(p.load, 0), coalesce(p.status <> 'offline' and p.expires_at > (select agent_runtime_private.clock()), false),
             a.started_at, a.last_seen, p.heartbeat_at, p.expires_at, a.incarnation
         )::agent_runtime_private.topology_agent as doc
  from public.distributed_agents a left join public.agent_presence p on p.agent_id = a.id;
revoke all on table agent_runtime_private.agent_documents from public, anon, authenticated, service_role;

-- register_agent(p_agent_id, p_name, p_kind, p_capabilities, p_version, p_host, p_pid, p_metadata,
-- p_heartbeat_ttl_ms) -> jsonb: registers (or resumes, after a crash) the agent, marks it online,
-- creates its inbox channel 'agent:<id>'; returns the agent document plus 'resumed'.
-- Raises: AR400 invalid input; AR401 invalid name; AR403 not allowed.
create function public.register_agent(
  p_agent_id text, p_name text, p_kind text default 'agent', p_capabilities text[] default '{}',
  p_version text default '', p_host text default '', p_pid integer default null,
  p_metadata jsonb default '{}'::jsonb, p_heartbeat_ttl_ms integer default 15000
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_ttl interval := coalesce(agent_runtime_private.ms(p_heartbeat_ttl_ms, 'heartbeat ttl', 1000, 3600000),
                             interval '15 seconds');
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
  v_resumed boolean;
  v_now timestamptz;
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
  select exists (select 1 from public.distributed_agents where id = p_agent_id) into v_resumed;
  v_now := agent_runtime_private.clock();  -- (one reading: the heartbeat and its expiry agree)
  insert into public.distributed_agents as a (id, name, kind, capabilities, version, host, pid, metadata,
                                       status, heartbeat_ttl)
  values (p_agent_id, p_name, coalesce(p_kind, 'agent'), coalesce(p_capabilities, '{}'),
          coalesce(p_version, ''), coalesce(p_host, ''), p_pid, p_metadata, 'online', v_ttl)
  on conflict (id) do update set
    name = excluded.name, kind = excluded.kind, capabilities = excluded.capabilities,
    version = excluded.version, host = excluded.host, pid = excluded.pid,
    metadata = excluded.metadata, status = 'online', heartbeat_ttl = excluded.heartbeat_ttl,
    started_at = v_now, last_seen = v_now, incarnation = a.incarnation + 1
  returning * into v_agent;

  insert into public.agent_presence as p (agent_id, status, heartbeat_at, expires_at, changed_at)
  values (p_agent_id, 'online', v_now, v_now + v_ttl, v_now)
  on conflict (agent_id) do update set
    status = 'online', heartbeat_at = v_now, expires_at = v_now + v_ttl, changed_at = v_now
  returning * into v_presence;

  -- The agent's inbox: a direct channel only it consumes.
  insert into public.communication_channels (name, kind, owner_id, created_by)
  values ('agent:' || p_agent_id, 'direct', p_agent_id, p_agent_id)
  on conflict (name) do nothing;

  return (select to_jsonb(d.doc) from agent_runtime_private.agent_documents d where d.id = p_agent_id) || jsonb_build_object('resumed', v_resumed);
exception
  when check_violation then
    raise exception 'invalid agent registration: %', sqlerrm using errcode = 'AR400';
end
$$;
revoke all on function public.register_agent(text, text, text, text[], text, text, integer, jsonb, integer) from public, anon, authenticated;
grant execute on function public.register_agent(text, text, text, text[], text, text, integer, jsonb, integer) to authenticated, service_role;

-- update_agent_last_seen(p_agent_id, p_status, p_load, p_info) -> jsonb: the heartbeat (the seed's
-- name): refreshes presence expiry and last_seen, optionally status/load/info; returns the agent.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent.
create function public.update_agent_last_seen(
  p_agent_id text, p_status text default null, p_load real default null, p_info jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
  v_now timestamptz;
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
  v_now := agent_runtime_private.clock();  -- (one reading: the heartbeat and its expiry agree)
  update public.distributed_agents set last_seen = v_now,
    status = coalesce(p_status, case when status = 'offline' then 'online' else status end)
  where id = p_agent_id returning * into v_agent;
  if not found then
    perform agent_runtime_private.agent_exists(p_agent_id);
  end if;
  update public.agent_presence set
    heartbeat_at = v_now,
    expires_at = v_now + v_agent.heartbeat_ttl,
    -- An agent whose presence had lapsed comes back online on its next heartbeat.
    status = coalesce(p_status, case when status = 'offline' or expires_at <= v_now
                                     then v_agent.status else status end),
    load = coalesce(p_load, load),
    info = coalesce(p_info, info)
  where agent_id = p_agent_id
  returning * into v_presence;
  return (select to_jsonb(d.doc) from agent_runtime_private.agent_documents d where d.id = p_agent_id);
end
$$;
revoke all on function public.update_agent_last_seen(text, text, real, jsonb) from public, anon, authenticated;
grant execute on function public.update_agent_last_seen(text, text, real, jsonb) to authenticated, service_role;

-- set_agent_status(p_agent_id, p_status, p_load) -> jsonb: a heartbeat that sets the status.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent.
create function public.set_agent_status(p_agent_id text, p_status text, p_load real default null)
returns jsonb language sql security definer set search_path = '' as $$
  select public.update_agent_last_seen(p_agent_id, p_status, p_load)
$$;
revoke all on function public.set_agent_status(text, text, real) from public, anon, authenticated;
grant execute on function public.set_agent_status(text, text, real) to authenticated, service_role;

-- deregister_agent(p_agent_id) -> jsonb: orderly leave: marks the agent offline and releases its
-- locks, keeps its row so the same id can resume; returns the agent.
-- Raises: AR403 not allowed; AR404 unknown agent.
create function public.deregister_agent(p_agent_id text) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
  v_now timestamptz;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  v_now := agent_runtime_private.clock();
  update public.distributed_agents set status = 'offline', last_seen = v_now
  where id = p_agent_id returning * into v_agent;
  if not found then
    perform agent_runtime_private.agent_exists(p_agent_id);
  end if;
  update public.agent_presence set status = 'offline', expires_at = v_now, changed_at = v_now
  where agent_id = p_agent_id returning * into v_presence;
  delete from public.distributed_locks where owner_id = p_agent_id;
  return (select to_jsonb(d.doc) from agent_runtime_private.agent_documents d where d.id = p_agent_id);
end
$$;
revoke all on function public.deregister_agent(text) from public, anon, authenticated;
grant execute on function public.deregister_agent(text) to authenticated, service_role;

-- list_agents(p_capability, p_online_only) -> jsonb: the agents (online ones by default), optionally
-- those with a capability, ordered by id.
-- Raises: nothing of its own.
create function public.list_agents(p_capability text default null, p_online_only boolean default true)
returns jsonb language sql stable security definer set search_path = '' as $$
  select coalesce(json_agg(to_json(d.doc) order by d.id), '[]'::json)::jsonb
  from agent_runtime_private.agent_documents d
  where (p_capability is null or d.capabilities @> array[p_capability])
    and (not p_online_only or (d.presence_status <> 'offline' and d.presence_expires_at > (select agent_runtime_private.clock())))
$$;
revoke all on function public.list_agents(text, boolean) from public, anon, authenticated;
grant execute on function public.list_agents(text, boolean) to authenticated, service_role;

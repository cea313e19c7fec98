-- get_network_topology at 10,000 agents and 1,000 channels (python -m benchmarks --only topology).
-- The document says the same as before (whitespace aside): same keys in the same order, same
-- values, same array orders (flows now also have a fixed order among equally busy flows). What
-- changes is how it is built:
--
-- * PL/pgSQL rather than SQL. A SQL function hands its result back through a tuplestore; a
--   document larger than work_mem (it is megabytes here) went to a temporary file and was read
--   back on every call. A SQL function's body is also planned again on every call.
-- * Objects come from rows of a composite type (to_json of a row) rather than json_build_object,
--   which costs more per value; the text is also smaller (no blank after ':' and ',').
-- * Each section is an array of those rows, written once, straight into the document, by the
--   final json_build_object (no JSON text per section that is then copied into the document).
-- * Subscriptions are sorted by the channel's rank in name order, then agent id: fewer text
--   comparisons than sorting by two names.
-- * The flow window's start is computed once, not for every message the filter looks at.
-- * agent_json is built from the same row type, so the registry functions and the topology keep
--   one definition of what an agent looks like (those functions turn it into jsonb: unchanged).

-- Return types that change (jsonb -> json): dropped and created again, grants at the end.
drop function public.get_network_topology(bigint, boolean);
drop function agent_runtime_private.agent_json(public.distributed_agents, public.agent_presence);

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

-- The registry functions return agent_json as jsonb, as before.
create or replace function public.register_agent(
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
create or replace function public.update_agent_last_seen(
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

-- Orderly leave: marks the agent offline, keeps its row so the same id can resume.
create or replace function public.deregister_agent(p_agent_id text) returns jsonb
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

create or replace function public.list_agents(p_capability text default null, p_online_only boolean default true)
returns jsonb language sql stable security definer set search_path = public, pg_temp as $$
  select coalesce(json_agg(agent_runtime_private.agent_json(a, p) order by a.id), '[]'::json)::jsonb
  from distributed_agents a
  left join agent_presence p on p.agent_id = a.id
  where (p_capability is null or a.capabilities @> array[p_capability])
    and (not p_online_only or (p.status <> 'offline' and p.expires_at > now()))
$$;

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

grant execute on function agent_runtime_private.agent_row(public.distributed_agents, public.agent_presence)
  to authenticated, service_role;
grant execute on function agent_runtime_private.agent_json(public.distributed_agents, public.agent_presence)
  to authenticated, service_role;
revoke execute on function public.get_network_topology(bigint, boolean) from public, anon;
grant execute on function public.get_network_topology(bigint, boolean) to authenticated, service_role;

-- agent_runtime declared schema, part 70: the network's topology as one document.
-- Owns: types topology_channel, topology_subscription, topology_flow (the document's objects: a
-- key is a field of these types); get_network_topology.
--
-- Built for 10,000 agents and 1,000 channels (python -m benchmarks --only topology): PL/pgSQL (a
-- SQL function's megabytes-large result went through a tuplestore, spilling to disk); objects are
-- rows of composite types (to_json of a row is cheaper than json_build_object); each section is an
-- array of rows written once into the final json_build_object; json, not jsonb.

create type agent_runtime_private.topology_channel as (
  name text, kind text, owner_id text, last_seq bigint
);

create type agent_runtime_private.topology_subscription as (
  agent_id text, channel text, cursor bigint, lag bigint
);

create type agent_runtime_private.topology_flow as (
  "from" text, channel text, "to" text, messages bigint, bytes bigint, last_at timestamptz
);

-- One document: agents with presence, channels, subscriptions (edges), recent flows (sender ->
-- channel over the last p_window_ms) and held locks. p_include_offline adds agents that left.
-- Orders: agents by id, channels by name, subscriptions by channel name then agent id, flows
-- busiest first (then by channel and sender, so that ties come out in one order), locks by key;
-- names bytewise (collate "C": they are ASCII).
-- Built as json, not jsonb: at 10,000 agents the document is megabytes, and jsonb would build
-- every object as a tree. See the top of this file for how it is kept fast.
-- (The row types above are the objects' keys: changing a key means changing its type.)
-- Raises: nothing of its own.
create function public.get_network_topology(p_window_ms bigint default 300000,
                                                       p_include_offline boolean default false)
returns json
language plpgsql stable security definer set search_path = '' as $$
declare
  v_agents agent_runtime_private.topology_agent[];
  v_channels agent_runtime_private.topology_channel[];
  v_subscriptions agent_runtime_private.topology_subscription[];
  v_flows agent_runtime_private.topology_flow[];
  -- Computed once: in a filter, now() - interval is a stable expression evaluated for every row.
  v_since timestamptz := agent_runtime_private.clock() - coalesce(p_window_ms, 300000) * interval '1 millisecond';
begin
  select array_agg(d.doc order by d.id collate "C")
  into v_agents
  from agent_runtime_private.agent_documents d
  where p_include_offline or (d.presence_status <> 'offline' and d.presence_expires_at > (select agent_runtime_private.clock()));

  select array_agg(row(c.name, c.kind, c.owner_id, c.last_seq)::agent_runtime_private.topology_channel
                   order by c.name collate "C")
  into v_channels
  from public.communication_channels c
  where c.kind <> 'direct' or p_include_offline or exists (
    select 1 from public.agent_presence p
    where p.agent_id = c.owner_id and p.status <> 'offline' and p.expires_at > (select agent_runtime_private.clock()));

  select array_agg(row(s.agent_id, c.name, s.cursor_seq,
                       case when c.kind = 'broadcast' then c.last_seq - s.cursor_seq end
                   )::agent_runtime_private.topology_subscription
                   order by c.name_rank, s.agent_id collate "C")
  into v_subscriptions
  from public.channel_subscriptions s
  join (select c.id, c.name, c.kind, c.last_seq, row_number() over (order by c.name collate "C") as name_rank
        from public.communication_channels c where c.kind <> 'direct') c on c.id = s.channel_id
  join public.agent_presence p on p.agent_id = s.agent_id
  where p_include_offline or (p.status <> 'offline' and p.expires_at > (select agent_runtime_private.clock()));

  select array_agg(row(f.sender_id, c.name, c.owner_id, f.n, f.bytes, f.last_at)::agent_runtime_private.topology_flow
                   order by f.n desc, c.name collate "C", f.sender_id collate "C")
  into v_flows
  from (select channel_id, sender_id, count(*) as n, sum(size_bytes) as bytes, max(created_at) as last_at
        from public.distributed_messages
        where created_at > v_since
        group by channel_id, sender_id) f
  join public.communication_channels c on c.id = f.channel_id;

  return json_build_object(
    'generated_at', (select agent_runtime_private.clock()),
    'window_ms', p_window_ms,
    'agents', coalesce(v_agents, '{}'),
    'channels', coalesce(v_channels, '{}'),
    'subscriptions', coalesce(v_subscriptions, '{}'),
    'flows', coalesce(v_flows, '{}'),
    'locks', public.list_locks());
end
$$;
revoke all on function public.get_network_topology(bigint, boolean) from public, anon, authenticated;
grant execute on function public.get_network_topology(bigint, boolean) to authenticated, service_role;

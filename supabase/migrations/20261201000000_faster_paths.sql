-- Faster paths, found by the benchmarks (benchmarks/): nothing here changes what the functions
-- mean, except the two additions named below.
--
-- * agent_json and get_network_topology build json, not jsonb: at 10,000 agents the topology is
--   megabytes, and jsonb builds every object as a tree and copies each section again.
-- * send_messages keeps a batch in an array of a composite type instead of a temporary table
--   (catalog writes and a re-plan of every statement on each call).
-- * fetch_messages and claim_messages take p_ack_ids (new): a consumer's acks ride along with its
--   next fetch, one round trip instead of two.
-- * acquire_lock answers a refused try without writing (no row lock, no commit flush).
-- * check_fencing_token share-locks the lock row until the guarded write commits (new: a successor
--   cannot take the lease over between the check and the write).

-- Signatures and return types that change: dropped and created again (grants at the end).
drop function public.get_network_topology(bigint, boolean);
drop function public.fetch_messages(text, text, integer);
drop function public.claim_messages(text, text, integer, bigint);
drop function agent_runtime_private.agent_json(public.distributed_agents, public.agent_presence);

create or replace function agent_runtime_private.agent_json(a public.distributed_agents, p public.agent_presence)
returns json language sql stable as $$
  select json_build_object(
    'id', a.id, 'name', a.name, 'kind', a.kind, 'capabilities', a.capabilities,
    'version', a.version, 'host', a.host, 'pid', a.pid, 'metadata', a.metadata,
    'status', case when p.expires_at is null or p.expires_at <= now() then 'offline'
                   else p.status end,
    'load', coalesce(p.load, 0), 'online', coalesce(p.status <> 'offline' and p.expires_at > now(), false),
    'started_at', a.started_at, 'last_seen', a.last_seen, 'heartbeat_at', p.heartbeat_at,
    'expires_at', p.expires_at, 'incarnation', a.incarnation)
$$;

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

-- One message of a batch being sent, parsed (send_messages keeps the batch in an array of these:
-- a temporary table would cost catalog writes and a re-plan of every statement on each call).
create type agent_runtime_private.outgoing_message as (
  ord integer, payload jsonb, headers jsonb, size_bytes integer, idempotency_key text,
  correlation_id uuid, reply_to text, ttl interval, delay interval, existing_id bigint,
  existing_seq bigint, dup_of integer
);

-- Sends a batch to one channel. p_messages is a JSON array of objects with 'payload' and optional
-- 'headers', 'idempotency_key', 'correlation_id', 'reply_to', 'ttl_ms', 'delay_ms'. A message whose
-- (sender, idempotency_key) was already sent is not sent again; its original id is returned with
-- duplicate = true. All or nothing: one bad message refuses the batch.
create or replace function public.send_messages(p_agent_id text, p_channel text, p_messages jsonb)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_channel public.communication_channels;
  v_count integer;
  v_out agent_runtime_private.outgoing_message[];
  v_malformed integer;
  v_oversized integer;
  v_keys integer;
  v_result jsonb;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  perform agent_runtime_private.agent_exists(p_agent_id);
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
  v_channel := agent_runtime_private.channel(p_channel);

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
                 agent_runtime_private.ms((e.m ->> 'ttl_ms')::bigint, 'ttl', 1, 315360000000) as ttl,
                 agent_runtime_private.ms((e.m ->> 'delay_ms')::bigint, 'delay', 0, 315360000000) as delay,
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

  -- A key this agent already sent returns the original id as a duplicate. A key repeated inside
  -- one batch is sent once: the first occurrence wins, and the later ones return its id as
  -- duplicates (one result per input message).
  if v_keys > 0 then
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
  end if;

  -- Taking the channel row lock serialises producers on this channel until commit, so seq order
  -- equals commit order.
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
end
$$;

-- Broadcast: the next messages after this subscriber's cursor, in seq order, replayed dead letters
-- first. Head-of-line retry: while a nacked message waits for its retry time nothing is returned.
-- p_ack_ids (optional): acknowledge these first, in the same transaction (ack_messages), so a
-- consumer's acks ride along with its next fetch: one round trip instead of two.
create or replace function public.fetch_messages(p_agent_id text, p_channel text, p_limit integer default 100,
                                      p_ack_ids bigint[] default null)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_channel public.communication_channels;
  v_sub public.channel_subscriptions;
  v_replays jsonb;
  v_messages jsonb;
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

  select coalesce(jsonb_agg(agent_runtime_private.message_json(m, v_channel.name, d.attempts + 1)
                            order by m.seq), '[]'::jsonb)
  into v_replays
  from message_dead_letters d join distributed_messages m on m.id = d.message_id
  where d.agent_id = p_agent_id and d.state = 'replaying' and m.channel_id = v_channel.id;

  if v_sub.retry_at is not null and v_sub.retry_at > now() then
    return v_replays;
  end if;
  select coalesce(jsonb_agg(agent_runtime_private.message_json(
           m, v_channel.name, case when m.seq = v_sub.retry_seq then v_sub.retry_attempts + 1 else 1 end)
         order by m.seq), '[]'::jsonb)
  into v_messages
  from (select * from distributed_messages
        where channel_id = v_channel.id and seq > v_sub.cursor_seq
          and (expires_at is null or expires_at > now())
        order by seq limit p_limit) m;
  return v_replays || v_messages;
end
$$;

-- Queue and inbox: claims up to p_limit visible messages in seq order for p_visibility_ms.
-- A claimed message whose visibility timed out is claimable again; one that has used up its
-- attempts goes to the dead letters instead. SKIP LOCKED: concurrent consumers never get the same
-- message and never wait on each other.
-- p_ack_ids (optional): acknowledge these first, in the same transaction, as fetch_messages does.
create or replace function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
                                      p_visibility_ms bigint default null, p_ack_ids bigint[] default null)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_channel public.communication_channels;
  v_visibility interval;
  v_result jsonb;
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
  where channel_id = v_channel.id and state = 'inflight' and visible_at <= now()
    and attempts >= v_channel.max_attempts;

  with picked as (
    select id from distributed_messages
    where channel_id = v_channel.id and state in ('ready', 'inflight') and visible_at <= now()
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
  select coalesce(jsonb_agg(agent_runtime_private.message_json(c.msg, v_channel.name, c.attempts)
                            order by c.seq), '[]'::jsonb)
  into v_result from claimed c;
  return v_result;
end
$$;

-- Takes the lease on p_key if it is free or expired (or already held by this same lease, which
-- extends it). Every new holder gets a fresh fencing token from a global sequence, so tokens
-- strictly increase per key across owners. Returns {acquired, token, expires_at, owner_id, ttl_ms};
-- when not acquired, ttl_ms says how long the current holder's lease still runs.
create or replace function public.acquire_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint,
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

-- Fencing check for a protected write: raises AR422 unless p_token is the live holder's token.
-- Call it in the same transaction as the write it guards. The lock row is share-locked until that
-- transaction ends, so no one can take the lease over between the check and the write's commit
-- (a successor's acquire waits for it): writes never go back to an older token. Volatile, as it locks.
create or replace function public.check_fencing_token(p_key text, p_token bigint) returns boolean
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

-- One document: agents with presence, channels, subscriptions (edges), recent flows (sender ->
-- channel over the last p_window_ms) and held locks. p_include_offline adds agents that left.
-- Built as json, not jsonb: at 10,000 agents the document is megabytes, and jsonb would build
-- every object as a tree and copy each section again into the document. Sorted bytewise
-- (collate "C": names are ASCII), which is what a large sort can afford.
create or replace function public.get_network_topology(p_window_ms bigint default 300000,
                                            p_include_offline boolean default false)
returns json
language sql stable security definer set search_path = public, pg_temp as $$
  select json_build_object(
    'generated_at', now(),
    'window_ms', p_window_ms,
    'agents', (select coalesce(json_agg(agent_runtime_private.agent_json(a, p) order by a.id collate "C"),
                               '[]'::json)
               from distributed_agents a left join agent_presence p on p.agent_id = a.id
               where p_include_offline or (p.status <> 'offline' and p.expires_at > now())),
    'channels', (select coalesce(json_agg(json_build_object(
                   'name', c.name, 'kind', c.kind, 'owner_id', c.owner_id, 'last_seq', c.last_seq)
                   order by c.name collate "C"), '[]'::json)
                 from communication_channels c
                 where c.kind <> 'direct' or p_include_offline or exists (
                   select 1 from agent_presence p
                   where p.agent_id = c.owner_id and p.status <> 'offline' and p.expires_at > now())),
    'subscriptions', (select coalesce(json_agg(json_build_object(
                        'agent_id', s.agent_id, 'channel', c.name, 'cursor', s.cursor_seq,
                        'lag', case when c.kind = 'broadcast' then c.last_seq - s.cursor_seq end)
                        order by c.name collate "C", s.agent_id collate "C"), '[]'::json)
                      from channel_subscriptions s join communication_channels c on c.id = s.channel_id
                      join agent_presence p on p.agent_id = s.agent_id
                      where c.kind <> 'direct'
                        and (p_include_offline or (p.status <> 'offline' and p.expires_at > now()))),
    'flows', (select coalesce(json_agg(json_build_object(
                'from', f.sender_id, 'channel', c.name, 'to', c.owner_id, 'messages', f.n,
                'bytes', f.bytes, 'last_at', f.last_at) order by f.n desc), '[]'::json)
              from (select channel_id, sender_id, count(*) as n, sum(size_bytes) as bytes,
                           max(created_at) as last_at
                    from distributed_messages
                    where created_at > now() - coalesce(p_window_ms, 300000) * interval '1 millisecond'
                    group by channel_id, sender_id) f
              join communication_channels c on c.id = f.channel_id),
    'locks', public.list_locks())
$$;

grant execute on function agent_runtime_private.agent_json(public.distributed_agents, public.agent_presence)
  to authenticated, service_role;
revoke execute on function public.get_network_topology(bigint, boolean) from public, anon;
revoke execute on function public.fetch_messages(text, text, integer, bigint[]) from public, anon;
revoke execute on function public.claim_messages(text, text, integer, bigint, bigint[]) from public, anon;
grant execute on function public.get_network_topology(bigint, boolean) to authenticated, service_role;
grant execute on function public.fetch_messages(text, text, integer, bigint[]) to authenticated, service_role;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[]) to authenticated, service_role;

-- One decision clock (issue 10): every clock read that decides something (message visibility and
-- TTL, claims and retries, presence expiry, lock leases, retention, metrics windows) goes through
-- agent_runtime_private.clock(), pg_catalog.clock_timestamp() in every migrated database.
-- agent_runtime.testing.TestDatabases redefines it in its test template only, adding an offset
-- that only the owner of a private table can set, so tests move the clock instead of sleeping out
-- TTLs; no session setting or claim can move it (see supabase/schemas/00_private_and_trust.sql).
--
-- The substitution is mechanical, in code (never in comments), and the same in supabase/schemas/:
--   clock_timestamp(), and now() that is not a column default:
--     in a SQL statement                  -> (select agent_runtime_private.clock())
--     in a PL/pgSQL expression (x := ..., IF, ELSIF, EXIT WHEN, WHILE) -> agent_runtime_private.clock()
-- A scalar subquery is read once per statement, when the statement runs (after its snapshot), and
-- an index can still compare against it as it could against now(); a PL/pgSQL expression calls it
-- directly (a subquery there would be a query of its own, ~10 us). Column defaults (created_at,
-- started_at...) record when a row was written and stay now(). Where one statement needs readings
-- that agree (a heartbeat and its expiry, a new lease's times), the function reads the clock once
-- into v_now.
-- Functions are replaced in place (create or replace keeps their privileges; revoke-before-grant
-- restated as in the schema files).

-- (00_private_and_trust.sql)
create or replace function agent_runtime_private.clock() returns timestamptz
language sql volatile set search_path = '' as $$
  select pg_catalog.clock_timestamp()
$$;
revoke all on function agent_runtime_private.clock() from public, anon, authenticated, service_role;

-- (10_agents_presence.sql)
create or replace view agent_runtime_private.agent_documents as
  select a.id, a.capabilities, p.status as presence_status, p.expires_at as presence_expires_at,
         row(a.id, a.name, a.kind, a.capabilities, a.version, a.host, a.pid, a.metadata,
             case when p.expires_at is null or p.expires_at <= (select agent_runtime_private.clock()) then 'offline' else p.status end,
             coalesce(p.load, 0), coalesce(p.status <> 'offline' and p.expires_at > (select agent_runtime_private.clock()), false),
             a.started_at, a.last_seen, p.heartbeat_at, p.expires_at, a.incarnation
         )::agent_runtime_private.topology_agent as doc
  from public.distributed_agents a left join public.agent_presence p on p.agent_id = a.id;
revoke all on table agent_runtime_private.agent_documents from public, anon, authenticated, service_role;

-- (10_agents_presence.sql)
create or replace function public.register_agent(
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

-- (10_agents_presence.sql)
create or replace function public.update_agent_last_seen(
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

-- (10_agents_presence.sql)
create or replace function public.deregister_agent(p_agent_id text) returns jsonb
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

-- (10_agents_presence.sql)
create or replace function public.list_agents(p_capability text default null, p_online_only boolean default true)
returns jsonb language sql stable security definer set search_path = '' as $$
  select coalesce(json_agg(to_json(d.doc) order by d.id), '[]'::json)::jsonb
  from agent_runtime_private.agent_documents d
  where (p_capability is null or d.capabilities @> array[p_capability])
    and (not p_online_only or (d.presence_status <> 'offline' and d.presence_expires_at > (select agent_runtime_private.clock())))
$$;
revoke all on function public.list_agents(text, boolean) from public, anon, authenticated;
grant execute on function public.list_agents(text, boolean) to authenticated, service_role;

-- (20_channels_subscriptions.sql)
create or replace function public.subscribe_channel(p_agent_id text, p_channel text, p_from text default 'latest')
returns jsonb
language plpgsql security definer set search_path = '' as $$
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
  insert into public.channel_subscriptions (channel_id, agent_id, cursor_seq)
  values (v_channel.id, p_agent_id, case when p_from = 'latest' then v_channel.last_seq else 0 end)
  on conflict (channel_id, agent_id) do update set updated_at = (select agent_runtime_private.clock())
  returning * into v_sub;
  return jsonb_build_object('channel', v_channel.name, 'kind', v_channel.kind,
                            'agent_id', p_agent_id, 'cursor', v_sub.cursor_seq,
                            'last_seq', v_channel.last_seq,
                            'visibility_timeout_ms', (extract(epoch from v_channel.visibility_timeout) * 1000)::bigint,
                            'max_attempts', v_channel.max_attempts);
end
$$;
revoke all on function public.subscribe_channel(text, text, text) from public, anon, authenticated;
grant execute on function public.subscribe_channel(text, text, text) to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.list_channels() returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(agent_runtime_private.channel_json(c) || jsonb_build_object(
           'subscribers', (select count(*) from public.channel_subscriptions s
                           join public.agent_presence p on p.agent_id = s.agent_id
                           where s.channel_id = c.id and p.status <> 'offline' and p.expires_at > (select agent_runtime_private.clock())),
           'ready', (select count(*) from public.distributed_messages m
                     where m.channel_id = c.id and m.state in ('ready', 'inflight')
                       and c.kind <> 'broadcast'),
           'dead', (select count(*) from public.distributed_messages m
                    where m.channel_id = c.id and m.state = 'dead'))
         order by c.name), '[]'::jsonb)
  from public.communication_channels c
  -- What RLS lets the caller read: an agent token sees no other agent's inbox.
  -- (Scalar subqueries: evaluated once per call, not per row.)
  where c.kind <> 'direct' or (select agent_runtime_private.is_trusted())
     or c.owner_id = (select agent_runtime_private.jwt_agent_id())
$$;
revoke all on function public.list_channels() from public, anon, authenticated;
grant execute on function public.list_channels() to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.send_messages(p_agent_id text, p_channel text, p_messages jsonb)
returns jsonb
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
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
  select c.*, exists (select 1 from public.distributed_agents a where a.id = p_agent_id) as agent_known
  into v_channel
  from (select) as one left join public.communication_channels c on c.name = p_channel;
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
      update public.communication_channels set last_seq = last_seq + v_count
      where id = v_channel.id
      returning last_seq
    ), inserted as (
      insert into public.distributed_messages (channel_id, seq, sender_id, payload, headers, size_bytes,
                                        correlation_id, reply_to, expires_at, visible_at)
      select v_channel.id, n.last_seq - v_count + o.ord, p_agent_id, o.payload, o.headers,
             o.size_bytes, o.correlation_id, o.reply_to, (select agent_runtime_private.clock()) + coalesce(o.ttl, v_channel.message_ttl),
             (select agent_runtime_private.clock()) + coalesce(o.delay, interval '0')
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
    left join public.distributed_messages m on m.sender_id = p_agent_id and m.idempotency_key = o.idempotency_key
    left join (select k.idempotency_key, min(k.ord) as first_ord from unnest(v_out) k
               where k.idempotency_key is not null group by k.idempotency_key) f
      on f.idempotency_key = o.idempotency_key;
    select count(*) into v_count from unnest(v_out) o where o.existing_id is null and o.dup_of is null;

    update public.communication_channels set last_seq = last_seq + v_count
    where id = v_channel.id
    returning last_seq into v_channel.last_seq;

    with fresh as (
      select o.*, v_channel.last_seq - v_count + row_number() over (order by o.ord) as seq
      from unnest(v_out) o where o.existing_id is null and o.dup_of is null
    ), inserted as (
      insert into public.distributed_messages (channel_id, seq, sender_id, payload, headers, size_bytes,
                                        correlation_id, reply_to, idempotency_key, expires_at,
                                        visible_at)
      select v_channel.id, f.seq, p_agent_id, f.payload, f.headers, f.size_bytes, f.correlation_id,
             f.reply_to, f.idempotency_key, (select agent_runtime_private.clock()) + coalesce(f.ttl, v_channel.message_ttl),
             (select agent_runtime_private.clock()) + coalesce(f.delay, interval '0')
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
revoke all on function public.send_messages(text, text, jsonb) from public, anon, authenticated;
grant execute on function public.send_messages(text, text, jsonb) to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.fetch_messages(p_agent_id text, p_channel text, p_limit integer default 100,
                                                 p_ack_ids bigint[] default null)
returns json
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
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
  v_channel := agent_runtime_private.channel(p_channel);
  if p_ack_ids is not null then
    perform public.ack_messages(p_agent_id, p_ack_ids, p_channel);
  end if;
  if v_channel.kind <> 'broadcast' then
    raise exception 'channel % is a % channel: claim its messages', p_channel, v_channel.kind
      using errcode = 'AR412';
  end if;
  select * into v_sub from public.channel_subscriptions where channel_id = v_channel.id and agent_id = p_agent_id;
  if not found then
    raise exception 'agent % is not subscribed to %', p_agent_id, p_channel using errcode = 'AR405',
      hint = 'subscribe first';
  end if;

  if exists (select 1 from public.message_dead_letters d where d.agent_id = p_agent_id and d.state = 'replaying') then
    select agent_runtime_private.messages_json(array_agg(m::public.distributed_messages order by m.seq),
                                               v_channel.name, array_agg(d.attempts + 1 order by m.seq))
    into v_replays
    from public.message_dead_letters d
    cross join lateral (select * from public.distributed_messages x where x.id = d.message_id offset 0) m
    where d.agent_id = p_agent_id and d.state = 'replaying' and m.channel_id = v_channel.id;
  end if;

  if v_sub.retry_at is null or v_sub.retry_at <= agent_runtime_private.clock() then  -- (see claim_messages)
    select agent_runtime_private.messages_json(
             array_agg(m::public.distributed_messages order by m.seq), v_channel.name,
             array_agg(case when m.seq = v_sub.retry_seq then v_sub.retry_attempts + 1 else 1 end order by m.seq))
    into v_messages
    from (select * from public.distributed_messages
          where channel_id = v_channel.id and seq > v_sub.cursor_seq
            and (expires_at is null or expires_at > (select agent_runtime_private.clock()))
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
revoke all on function public.fetch_messages(text, text, integer, bigint[]) from public, anon, authenticated;
grant execute on function public.fetch_messages(text, text, integer, bigint[]) to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
                                      p_visibility_ms bigint default null, p_ack_ids bigint[] default null,
                                      p_classes text[] default null)
returns json
language plpgsql security definer set search_path = '' set enable_seqscan = off set enable_bitmapscan = off as $$
declare
  v_channel public.communication_channels;
  v_visibility interval;
  v_result json;
  v_batch json;
  v_claimed integer;
  v_total integer := 0;
  v_dead integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'AR400';
  end if;
  if p_classes is not null and (cardinality(p_classes) = 0 or array_position(p_classes, null) is not null
                                or not p_classes <@ array['request', 'reply', 'plain']) then
    raise exception 'classes must be some of request, reply, plain' using errcode = 'AR400';
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  if p_ack_ids is not null then
    perform public.ack_messages(p_agent_id, p_ack_ids, p_channel);
  end if;
  if v_channel.kind = 'broadcast' then
    raise exception 'channel % is a broadcast channel: fetch its messages', p_channel using errcode = 'AR412';
  end if;
  if v_channel.kind = 'direct' and v_channel.owner_id <> p_agent_id then
    raise exception 'only agent % may consume its inbox', v_channel.owner_id using errcode = 'AR403';
  end if;
  v_visibility := coalesce(agent_runtime_private.ms(p_visibility_ms, 'visibility timeout', 100, 43200000),
                           v_channel.visibility_timeout);

  -- One scan of the claim index in seq order (ready and in-flight rows only). A timed-out claim
  -- that used up its attempts dies where the scan meets it, and the claim goes on past it.
  loop
    with picked as (
      select m.id, (m.state = 'inflight' and m.attempts >= v_channel.max_attempts) as spent
      from public.distributed_messages m
      where m.channel_id = v_channel.id and m.state in ('ready', 'inflight') and m.visible_at <= (select agent_runtime_private.clock())
        and (m.expires_at is null or m.expires_at > (select agent_runtime_private.clock()))
        and (p_classes is null
             or (m.reply_to is not null and 'request' = any (p_classes))
             or (m.reply_to is null and m.correlation_id is not null and 'reply' = any (p_classes))
             or (m.reply_to is null and m.correlation_id is null and 'plain' = any (p_classes)))
      order by m.seq
      limit p_limit - v_total
      for update skip locked
    ), died as (
      update public.distributed_messages m set state = 'dead',
                                               last_error = coalesce(m.last_error, 'visibility timeout'),
                                               claimed_by = null
      from picked where m.id = picked.id and picked.spent
      returning m.id
    ), claimed as (
      update public.distributed_messages m set state = 'inflight', attempts = m.attempts + 1,
                                               claimed_by = p_agent_id, visible_at = (select agent_runtime_private.clock()) + v_visibility
      from picked where m.id = picked.id and not picked.spent
      returning m as msg, m.seq as seq, m.attempts as attempts
    )
    select agent_runtime_private.messages_json(array_agg(c.msg order by c.seq), v_channel.name,
                                               array_agg(c.attempts order by c.seq)),
           count(*), (select count(*) from died)
    into v_batch, v_claimed, v_dead from claimed c;
    v_result := case when v_result is null then v_batch
                     when v_batch is null then v_result
                     else (v_result::jsonb || v_batch::jsonb)::json end;
    v_total := v_total + v_claimed;
    -- (a batch that lost rows to the dead letters looks further: a short batch means no more)
    exit when v_dead = 0 or v_total >= p_limit;
  end loop;
  return coalesce(v_result, '[]'::json);
end
$$;
revoke all on function public.claim_messages(text, text, integer, bigint, bigint[], text[]) from public, anon, authenticated;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[], text[]) to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.ack_messages(p_agent_id text, p_message_ids bigint[], p_channel text default null)
returns integer
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off set enable_bitmapscan = off as $$
declare
  v_acked integer := 0;
  v_n integer;
  v_channel_id bigint;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_message_ids is null or cardinality(p_message_ids) > 10000 then
    raise exception 'message ids must be an array of at most 10000' using errcode = 'AR400';
  end if;
  if p_channel is not null then
    v_channel_id := (agent_runtime_private.channel(p_channel)).id;
  end if;

  -- (coalesce: a plan cached when the table was small must not scan the claim index instead of
  -- looking the ids up.) Besides its claims, an agent acks the replies in its own inbox that it
  -- took from their (signed) wake-ups without claiming them: never claimed, so no one else holds them.
  if exists (select 1 from public.distributed_messages m
             where m.id = any (p_message_ids) and (v_channel_id is null or m.channel_id = v_channel_id)
               and ((coalesce(m.state, '') = 'inflight' and m.claimed_by = p_agent_id)
                    or (coalesce(m.state, '') = 'ready' and m.attempts = 0 and m.reply_to is null
                        and m.correlation_id is not null))) then
    update public.distributed_messages m set state = 'acked', acked_at = (select agent_runtime_private.clock()), claimed_by = p_agent_id
    from public.communication_channels c
    where m.id = any (p_message_ids) and c.id = m.channel_id and c.kind <> 'broadcast'
      and (v_channel_id is null or m.channel_id = v_channel_id)
      and ((coalesce(m.state, '') = 'inflight' and m.claimed_by = p_agent_id)
           or (coalesce(m.state, '') = 'ready' and m.attempts = 0 and m.reply_to is null
               and m.correlation_id is not null and c.kind = 'direct' and c.owner_id = p_agent_id));
    get diagnostics v_acked = row_count;
  end if;

  with acked as (
    select m.channel_id, max(m.seq) as seq, count(*) as n
    from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id
    where m.id = any (p_message_ids) and c.kind = 'broadcast'
      and (v_channel_id is null or m.channel_id = v_channel_id)
    group by m.channel_id
  ), moved as (
    update public.channel_subscriptions s set
      cursor_seq = greatest(s.cursor_seq, a.seq),
      retry_seq = case when s.retry_seq <= a.seq then null else s.retry_seq end,
      retry_attempts = case when s.retry_seq <= a.seq then 0 else s.retry_attempts end,
      retry_at = case when s.retry_seq <= a.seq then null else s.retry_at end,
      updated_at = (select agent_runtime_private.clock())
    from acked a
    where s.channel_id = a.channel_id and s.agent_id = p_agent_id
    returning a.n
  )
  select coalesce(sum(n), 0) into v_n from moved;
  v_acked := v_acked + v_n;

  update public.message_dead_letters d set state = 'resolved'
  where d.agent_id = p_agent_id and d.message_id = any (p_message_ids) and d.state = 'replaying'
    and (v_channel_id is null
         or exists (select 1 from public.distributed_messages m where m.id = d.message_id and m.channel_id = v_channel_id));
  return v_acked;
end
$$;
revoke all on function public.ack_messages(text, bigint[], text) from public, anon, authenticated;
grant execute on function public.ack_messages(text, bigint[], text) to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.nack_message(p_agent_id text, p_message_id bigint, p_delay_ms bigint default 0,
                                               p_reason text default null, p_dead boolean default false,
                                               p_release boolean default false)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_delay interval := coalesce(agent_runtime_private.ms(p_delay_ms, 'delay', 0, 86400000), interval '0');
  v_reason text := left(p_reason, 2000);
  v_msg public.distributed_messages;
  v_channel public.communication_channels;
  v_sub public.channel_subscriptions;
  v_dead public.message_dead_letters;
  v_attempts integer;
  v_now timestamptz;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  -- Locked: a claim by another consumer committing meanwhile is seen (and the nack ignored), not
  -- overwritten by this late nack.
  select * into v_msg from public.distributed_messages where id = p_message_id for update;
  if not found then
    raise exception 'unknown message %', p_message_id using errcode = 'AR406';
  end if;
  v_now := agent_runtime_private.clock();
  select * into v_channel from public.communication_channels where id = v_msg.channel_id;

  if v_channel.kind <> 'broadcast' then
    if v_msg.state <> 'inflight' or v_msg.claimed_by is distinct from p_agent_id then
      return jsonb_build_object('state', 'ignored', 'attempts', v_msg.attempts);
    end if;
    if p_release and not p_dead then
      update public.distributed_messages set state = 'ready', claimed_by = null,
                                             attempts = greatest(attempts - 1, 0), visible_at = v_now + v_delay
      where id = p_message_id returning * into v_msg;
      return jsonb_build_object('state', 'retry', 'attempts', v_msg.attempts, 'retry_at', v_msg.visible_at);
    end if;
    if p_dead or v_msg.attempts >= v_channel.max_attempts then
      update public.distributed_messages set state = 'dead', last_error = v_reason, claimed_by = null
      where id = p_message_id;
      return jsonb_build_object('state', 'dead', 'attempts', v_msg.attempts);
    end if;
    update public.distributed_messages set state = 'ready', claimed_by = null, last_error = v_reason,
                                           visible_at = v_now + v_delay
    where id = p_message_id returning * into v_msg;
    return jsonb_build_object('state', 'retry', 'attempts', v_msg.attempts, 'retry_at', v_msg.visible_at);
  end if;

  -- Broadcast: a replayed dead letter failing again goes straight back to dead.
  select * into v_dead from public.message_dead_letters
  where message_id = p_message_id and agent_id = p_agent_id and state = 'replaying';
  if found then
    update public.message_dead_letters set state = 'dead', attempts = attempts + 1, reason = v_reason,
                                           dead_at = v_now
    where id = v_dead.id;
    return jsonb_build_object('state', 'dead', 'attempts', v_dead.attempts + 1);
  end if;

  select * into v_sub from public.channel_subscriptions
  where channel_id = v_channel.id and agent_id = p_agent_id for update;
  if not found or v_msg.seq <= v_sub.cursor_seq then
    return jsonb_build_object('state', 'ignored', 'attempts', 0);
  end if;
  v_now := agent_runtime_private.clock();  -- (after the subscription row lock)
  v_attempts := case when v_sub.retry_seq = v_msg.seq then v_sub.retry_attempts + 1 else 1 end;
  if p_dead or v_attempts >= v_channel.max_attempts then
    insert into public.message_dead_letters (message_id, agent_id, attempts, reason)
    values (p_message_id, p_agent_id, v_attempts, v_reason)
    on conflict (message_id, agent_id) do update set state = 'dead', attempts = excluded.attempts,
      reason = excluded.reason, dead_at = v_now;
    -- Skip past the dead message (everything before it was delivered in order).
    update public.channel_subscriptions set cursor_seq = v_msg.seq, retry_seq = null, retry_attempts = 0,
                                            retry_at = null, updated_at = v_now
    where channel_id = v_channel.id and agent_id = p_agent_id;
    return jsonb_build_object('state', 'dead', 'attempts', v_attempts);
  end if;
  -- Rewind to just before the nacked message: it and everything after are delivered again.
  update public.channel_subscriptions set cursor_seq = v_msg.seq - 1, retry_seq = v_msg.seq,
                                          retry_attempts = v_attempts, retry_at = v_now + v_delay,
                                          updated_at = v_now
  where channel_id = v_channel.id and agent_id = p_agent_id;
  return jsonb_build_object('state', 'retry', 'attempts', v_attempts, 'retry_at', v_now + v_delay);
end
$$;
revoke all on function public.nack_message(text, bigint, bigint, text, boolean, boolean) from public, anon, authenticated;
grant execute on function public.nack_message(text, bigint, bigint, text, boolean, boolean) to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.extend_visibility(p_agent_id text, p_message_ids bigint[], p_visibility_ms bigint)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_visibility interval := agent_runtime_private.ms(p_visibility_ms, 'visibility timeout', 100, 43200000);
  v_ids bigint[];
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  select array_agg(id) into v_ids from (
    select id from public.distributed_messages
    where id = any (p_message_ids) and state = 'inflight' and claimed_by = p_agent_id
    order by id for update) locked;
  update public.distributed_messages set visible_at = (select agent_runtime_private.clock()) + v_visibility
  where id = any (v_ids) and state = 'inflight' and claimed_by = p_agent_id;
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.extend_visibility(text, bigint[], bigint) from public, anon, authenticated;
grant execute on function public.extend_visibility(text, bigint[], bigint) to authenticated, service_role;

-- (30_messages_dead_letters.sql)
create or replace function public.replay_dead_letters(p_agent_id text, p_message_ids bigint[]) returns integer
language plpgsql security definer set search_path = '' as $$
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
  update public.distributed_messages m set state = 'ready', attempts = 0, visible_at = (select agent_runtime_private.clock()), claimed_by = null,
                                    expires_at = case when expires_at <= (select agent_runtime_private.clock()) then null else expires_at end
  where m.id = any (p_message_ids) and m.state = 'dead'
    and (agent_runtime_private.is_trusted() or exists (
      select 1 from public.communication_channels c where c.id = m.channel_id and (c.owner_id = p_agent_id
        or exists (select 1 from public.channel_subscriptions s
                   where s.channel_id = c.id and s.agent_id = p_agent_id))));
  get diagnostics v_n = row_count;
  update public.message_dead_letters set state = 'replaying', replayed_at = (select agent_runtime_private.clock())
  where message_id = any (p_message_ids) and state = 'dead'
    and (agent_runtime_private.is_trusted() or agent_id = p_agent_id);
  get diagnostics v_m = row_count;
  return v_n + v_m;
end
$$;
revoke all on function public.replay_dead_letters(text, bigint[]) from public, anon, authenticated;
grant execute on function public.replay_dead_letters(text, bigint[]) to authenticated, service_role;

-- (40_locks.sql)
create or replace function agent_runtime_private.lock_json(l public.distributed_locks, p_acquired boolean)
returns jsonb language sql volatile set search_path = '' as $$
  select jsonb_build_object('key', l.key, 'acquired', p_acquired, 'owner_id', l.owner_id,
                            'lease_id', case when p_acquired then l.lease_id end,
                            'token', case when p_acquired then l.token end,
                            'acquired_at', l.acquired_at, 'expires_at', l.expires_at,
                            'ttl_ms', greatest(0, (extract(epoch from l.expires_at - (select agent_runtime_private.clock())) * 1000)::bigint))
$$;
revoke all on function agent_runtime_private.lock_json(public.distributed_locks, boolean) from public, anon, authenticated, service_role;

-- (40_locks.sql)
create or replace function public.acquire_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint,
                                    p_metadata jsonb default '{}'::jsonb, p_wait_ms bigint default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_ttl interval := agent_runtime_private.ms(p_ttl_ms, 'lock ttl', 100, 86400000);
  v_wait interval := agent_runtime_private.ms(p_wait_ms, 'lock wait', 0, 86400000);
  v_saved_lock_timeout text := pg_catalog.current_setting('lock_timeout');
  v_lock public.distributed_locks;
  v_now timestamptz;
  v_same boolean;
  v_acquired boolean := false;
  v_until timestamptz;
  v_wait_ms bigint := p_wait_ms;
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
  select * into v_lock from public.distributed_locks where key = p_key;
  if found and v_lock.expires_at > agent_runtime_private.clock()
     and not (v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id) then
    if coalesce(p_wait_ms, 0) <= 0 then
      return agent_runtime_private.lock_json(v_lock, false);
    end if;
  end if;
  if coalesce(p_wait_ms, 0) > 0 then
    -- (a waiting caller queues even for a free lease: one that just released it cannot take it
    -- again ahead of those waiting)
    v_until := agent_runtime_private.clock() + v_wait;
    begin  -- (a subtransaction: a queue wait that times out ends here; the lock, once got, is kept)
      perform pg_catalog.set_config('lock_timeout', p_wait_ms::text || 'ms', true);
      perform pg_catalog.pg_advisory_xact_lock(1095910475, pg_catalog.hashtext(p_key));  -- ('ARLK', the key)
      perform pg_catalog.set_config('lock_timeout', v_saved_lock_timeout, true);
    exception when lock_not_available then
      select * into v_lock from public.distributed_locks where key = p_key;
      return agent_runtime_private.lock_json(v_lock, false);
    end;
    loop  -- first in the queue: watch the lease until it is released or expires
      select * into v_lock from public.distributed_locks where key = p_key;
      exit when not found or v_lock.expires_at <= agent_runtime_private.clock()
                or (v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id);
      if agent_runtime_private.clock() >= v_until then
        return agent_runtime_private.lock_json(v_lock, false);
      end if;
      perform pg_catalog.pg_sleep(least(0.002, extract(epoch from v_until - (select agent_runtime_private.clock()))));
    end loop;
    v_wait_ms := greatest((extract(epoch from v_until - agent_runtime_private.clock()) * 1000)::bigint, 0);
  end if;

  begin  -- (a subtransaction: a lock wait that times out ends here, and its lock_timeout with it)
    if v_wait is not null then
      -- lock_timeout 0 would mean "wait forever": a zero wait is the shortest one.
      perform pg_catalog.set_config('lock_timeout', greatest(v_wait_ms, 1)::text || 'ms', true);
    end if;
    loop
      select * into v_lock from public.distributed_locks where key = p_key for update;
      if not found then
        v_now := agent_runtime_private.clock();  -- (one reading: acquired, renewed and expiry agree)
        insert into public.distributed_locks as l (key, owner_id, lease_id, token, acquired_at, renewed_at,
                                                   expires_at, metadata)
        values (p_key, p_agent_id, p_lease_id, nextval('public.distributed_locks_token_seq'), v_now,
                v_now, v_now + v_ttl, coalesce(p_metadata, '{}'::jsonb))
        on conflict (key) do nothing
        returning * into v_lock;
        v_acquired := found;
        exit when v_acquired;
        continue;  -- inserted concurrently: lock that row and decide again
      end if;
      v_now := agent_runtime_private.clock();  -- after the wait for the row
      v_same := v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id;
      exit when v_lock.expires_at > v_now and not v_same;  -- another lease took it meanwhile
      update public.distributed_locks set
        owner_id = p_agent_id, lease_id = p_lease_id,
        token = case when v_same and v_lock.expires_at > v_now then token
                     else nextval('public.distributed_locks_token_seq') end,
        acquired_at = case when v_same and v_lock.expires_at > v_now then acquired_at else v_now end,
        renewed_at = v_now, expires_at = v_now + v_ttl, metadata = coalesce(p_metadata, '{}'::jsonb)
      where key = p_key
      returning * into v_lock;
      v_acquired := true;
      exit;
    end loop;
    perform pg_catalog.set_config('lock_timeout', v_saved_lock_timeout, true);
  exception when lock_not_available then
    select * into v_lock from public.distributed_locks where key = p_key;
    v_acquired := false;
  end;
  return agent_runtime_private.lock_json(v_lock, v_acquired);
end
$$;
revoke all on function public.acquire_lock(text, text, uuid, bigint, jsonb, bigint) from public, anon, authenticated;
grant execute on function public.acquire_lock(text, text, uuid, bigint, jsonb, bigint) to authenticated, service_role;

-- (40_locks.sql)
create or replace function public.renew_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_ttl interval := agent_runtime_private.ms(p_ttl_ms, 'lock ttl', 100, 86400000);
  v_lock public.distributed_locks;
  v_now timestamptz;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if v_ttl is null then
    raise exception 'lock ttl is required' using errcode = 'AR400';
  end if;
  select * into v_lock from public.distributed_locks
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id
  for no key update;  -- (compatible with a fencing check's key share: renewals go on meanwhile)
  v_now := agent_runtime_private.clock();
  if not found or v_lock.expires_at <= v_now then
    raise exception 'lock % is not held by this lease (expired, released or taken over)', p_key
      using errcode = 'AR409';
  end if;
  update public.distributed_locks set expires_at = v_now + v_ttl, renewed_at = v_now
  where key = p_key
  returning * into v_lock;
  return agent_runtime_private.lock_json(v_lock, true);
end
$$;
revoke all on function public.renew_lock(text, text, uuid, bigint) from public, anon, authenticated;
grant execute on function public.renew_lock(text, text, uuid, bigint) to authenticated, service_role;

-- (40_locks.sql)
create or replace function public.release_lock(p_agent_id text, p_key text, p_lease_id uuid) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  delete from public.distributed_locks
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id and expires_at > (select agent_runtime_private.clock());
  return found;
end
$$;
revoke all on function public.release_lock(text, text, uuid) from public, anon, authenticated;
grant execute on function public.release_lock(text, text, uuid) to authenticated, service_role;

-- (40_locks.sql)
create or replace function public.check_fencing_token(p_key text, p_token bigint) returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  v_lock public.distributed_locks;
  v_now timestamptz;
  v_idle_ms bigint;
  v_current_ms bigint;
begin
  select * into v_lock from public.distributed_locks where key = p_key and token = p_token for key share;
  v_now := agent_runtime_private.clock();
  if not found or v_lock.expires_at <= v_now then
    raise exception 'fencing token % is not the current holder''s token for %', p_token, p_key
      using errcode = 'AR422';
  end if;
  v_idle_ms := greatest(1, ceil(extract(epoch from (v_lock.expires_at - v_now)
                                                  + (v_lock.expires_at - v_lock.renewed_at) / 3) * 1000))::bigint;
  select s.setting::bigint into v_current_ms from pg_catalog.pg_settings s
  where s.name = 'idle_in_transaction_session_timeout';
  if coalesce(v_current_ms, 0) = 0 or v_current_ms > v_idle_ms then
    perform pg_catalog.set_config('idle_in_transaction_session_timeout', v_idle_ms::text, true);
  end if;
  return true;
end
$$;
revoke all on function public.check_fencing_token(text, bigint) from public, anon, authenticated;
grant execute on function public.check_fencing_token(text, bigint) to authenticated, service_role;

-- (40_locks.sql)
create or replace function public.list_locks() returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'key', key, 'owner_id', owner_id, 'token', token, 'acquired_at', acquired_at,
           'expires_at', expires_at, 'metadata', metadata) order by key), '[]'::jsonb)
  from public.distributed_locks where expires_at > (select agent_runtime_private.clock())
$$;
revoke all on function public.list_locks() from public, anon, authenticated;
grant execute on function public.list_locks() to authenticated, service_role;

-- (50_metrics.sql)
create or replace function public.record_communication_metrics(p_agent_id text, p_metrics jsonb) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  perform agent_runtime_private.agent_exists(p_agent_id);
  if p_metrics is null or jsonb_typeof(p_metrics) <> 'array' or jsonb_array_length(p_metrics) > 10000 then
    raise exception 'metrics must be a JSON array of at most 10000 entries' using errcode = 'AR400';
  end if;
  begin
    insert into public.communication_metrics as cm (agent_id, channel, metric, bucket, count, sum, min, max)
    select p_agent_id, coalesce(e ->> 'channel', ''), e ->> 'metric',
           date_bin(interval '1 minute', (select agent_runtime_private.clock()), timestamptz '2000-01-01'),
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
revoke all on function public.record_communication_metrics(text, jsonb) from public, anon, authenticated;
grant execute on function public.record_communication_metrics(text, jsonb) to authenticated, service_role;

-- (50_metrics.sql)
create or replace function public.get_communication_metrics(p_agent_id text default null, p_metric text default null,
                                                 p_since_ms bigint default 3600000)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'agent_id', agent_id, 'channel', channel, 'metric', metric, 'count', count, 'sum', sum,
           'min', min, 'max', max, 'mean', case when count > 0 then sum / count end,
           'first_bucket', first_bucket, 'last_bucket', last_bucket)
         order by agent_id, channel, metric), '[]'::jsonb)
  from (
    select agent_id, channel, metric, sum(count)::bigint as count, sum(sum) as sum, min(min) as min,
           max(max) as max, min(bucket) as first_bucket, max(bucket) as last_bucket
    from public.communication_metrics
    where (p_agent_id is null or agent_id = p_agent_id) and (p_metric is null or metric = p_metric)
      -- What RLS lets the caller read: an agent token reads its own figures only.
      and ((select agent_runtime_private.is_trusted()) or agent_id = (select agent_runtime_private.jwt_agent_id()))
      and bucket >= date_bin(interval '1 minute',
                             (select agent_runtime_private.clock()) - coalesce(p_since_ms, 3600000) * interval '1 millisecond',
                             timestamptz '2000-01-01')
    group by agent_id, channel, metric
  ) s
$$;
revoke all on function public.get_communication_metrics(text, text, bigint) from public, anon, authenticated;
grant execute on function public.get_communication_metrics(text, text, bigint) to authenticated, service_role;

-- (60_cleanup.sql)
create or replace function public.cleanup_expired_messages(p_limit integer default 10000) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_expired_messages');
  delete from public.distributed_messages where id in (
    select m.id from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id
    where (m.expires_at <= (select agent_runtime_private.clock()) and m.state <> 'dead')
       or m.created_at < (select agent_runtime_private.clock()) - c.retention
       or (m.state = 'acked' and m.acked_at < (select agent_runtime_private.clock()) - least(c.retention, interval '1 hour'))
    limit p_limit
    for update of m skip locked);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.cleanup_expired_messages(integer) from public, anon, authenticated;
grant execute on function public.cleanup_expired_messages(integer) to service_role;

-- (60_cleanup.sql)
create or replace function public.cleanup_expired_locks() returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_expired_locks');
  delete from public.distributed_locks where expires_at <= (select agent_runtime_private.clock());
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.cleanup_expired_locks() from public, anon, authenticated;
grant execute on function public.cleanup_expired_locks() to service_role;

-- (60_cleanup.sql)
create or replace function public.cleanup_stale_presence() returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_stale_presence');
  update public.agent_presence set status = 'offline', changed_at = (select agent_runtime_private.clock())
  where status <> 'offline' and expires_at <= (select agent_runtime_private.clock());
  get diagnostics v_n = row_count;
  update public.distributed_agents a set status = 'offline'
  from public.agent_presence p where p.agent_id = a.id and p.status = 'offline' and a.status <> 'offline';
  return v_n;
end
$$;
revoke all on function public.cleanup_stale_presence() from public, anon, authenticated;
grant execute on function public.cleanup_stale_presence() to service_role;

-- (60_cleanup.sql)
create or replace function public.cleanup_old_metrics(p_older_than_ms bigint default 604800000) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_old_metrics');
  delete from public.communication_metrics
  where bucket < (select agent_runtime_private.clock()) - agent_runtime_private.ms(p_older_than_ms, 'metrics retention', 60000, 315360000000);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.cleanup_old_metrics(bigint) from public, anon, authenticated;
grant execute on function public.cleanup_old_metrics(bigint) to service_role;

-- (70_topology.sql)
create or replace function public.get_network_topology(p_window_ms bigint default 300000,
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

-- (80_wakeups.sql)
create or replace function agent_runtime_private.on_messages_inserted() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  r record;
  v_topic text;
  v_messages text;
  v_note text;
begin
  for r in
    select c.id, c.name, c.kind, min(n.seq) as first_seq, max(n.seq) as seq, count(*) as n,
           bool_and(n.visible_at <= (select agent_runtime_private.clock())) as visible, sum(n.size_bytes) as payload_bytes,
           bool_and(n.reply_to is null and n.correlation_id is not null) as replies
    from new_rows n join public.communication_channels c on c.id = n.channel_id
    group by c.id, c.name, c.kind
  loop
    v_topic := case when r.kind = 'direct' then r.name else 'channel:' || r.name end;
    v_note := null;
    if (r.kind = 'broadcast' or (r.kind = 'direct' and r.replies)) and r.visible and r.n <= 16 and r.seq - r.first_seq + 1 = r.n
       and r.payload_bytes < 6000 then
      select agent_runtime_private.messages_json(array_agg(n::public.distributed_messages order by n.seq), r.name,
                                                 array_agg(1 order by n.seq))::text
      into v_messages
      from new_rows n where n.channel_id = r.id;
      if octet_length(v_messages) < 6000 then  -- (headers count too)
        v_note := json_build_object(
          'c', r.name, 's', r.seq, 'f', r.first_seq, 'm', v_messages,
          'h', agent_runtime_private.wakeup_mac(v_topic || E'\n' || r.name || E'\n' || r.first_seq || E'\n' || v_messages)
        )::text;
        if octet_length(v_note) >= 7200 then
          v_note := null;  -- (quoting the messages as a string made it too big for pg_notify)
        end if;
      end if;
    end if;
    if v_note is null then
      perform pg_catalog.pg_notify('agent_runtime', json_build_object('c', r.name, 's', r.seq, 't', v_topic,
                                                                      'e', 'message')::text);
      perform realtime.send(jsonb_build_object('c', r.name, 's', r.seq), 'message', v_topic, true);
    else
      perform pg_catalog.pg_notify('agent_runtime', left(v_note, -1) || ',"t":' || to_json(v_topic)::text
                                                    || ',"e":"message"}');
      -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
      -- realtime.messages: only the channel's subscribers hear it). realtime.send never raises.
      perform realtime.send(v_note::jsonb, 'message', v_topic, true);
    end if;
  end loop;
  return null;
end
$$;
revoke all on function agent_runtime_private.on_messages_inserted() from public, anon, authenticated, service_role;

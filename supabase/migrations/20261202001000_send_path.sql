-- The send path (issue 13): what sending a message costs the server.
-- * send_messages sends the wake-up itself (agent_runtime_private.notify_sent), with the batch it
--   has in hand: the statement trigger on distributed_messages (on_messages_inserted) is gone. It
--   captured the new rows in a transition table, grouped them by channel joined to the channels,
--   read new_rows again for the carried JSON and read the routes, in three queries: a fifth of the
--   server CPU of sending one message (perf, 1,500 sends). send_messages is the only writer of new
--   messages (replays, nacks and hand-backs are updates: on_messages_ready still wakes for those).
-- * send_messages reads the clock once (in the channel UPDATE's RETURNING, after any wait for the
--   row lock; it was read twice in the INSERT), and checks a broadcast's delays and sums what a
--   wake-up needs to know in the parsing query (the delay check was a query of its own).
-- * clock() is PL/pgSQL (supabase/schemas/00_private_and_trust.sql): as a SQL function with a pinned
--   search_path it was parsed and planned again on every call from a new statement, in every API
--   call that decides anything by the clock (14-16 us a call in a send; 1.3-1.4 us now).
-- * wakeup_mac and topic_channel are PL/pgSQL: as SQL functions with a pinned search_path they are
--   never inlined, and were parsed and planned again in every transaction that sent a wake-up
--   (32 us and 12 us of each send; now 9 us and 2 us).

create or replace function agent_runtime_private.clock() returns timestamptz
language plpgsql volatile set search_path = '' as $$
begin
  return pg_catalog.clock_timestamp();
end
$$;
revoke all on function agent_runtime_private.clock() from public, anon, authenticated, service_role;

create or replace function agent_runtime_private.wakeup_mac(p_text text) returns text
language plpgsql stable set search_path = '' as $$
begin
  return (select pg_catalog.encode(pg_catalog.sha256(s.outer_pad || pg_catalog.sha256(s.inner_pad || pg_catalog.convert_to(p_text, 'UTF8'))), 'hex')
          from agent_runtime_private.wakeup_secret s);
end
$$;

revoke all on function agent_runtime_private.wakeup_mac(text) from public, anon, authenticated, service_role;

create or replace function agent_runtime_private.topic_channel(p_topic text) returns text
language plpgsql immutable parallel safe set search_path = '' as $$
begin
  return 'agent_runtime:' || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_topic, 'UTF8')), 'hex'), 32);
end
$$;

revoke all on function agent_runtime_private.topic_channel(text) from public, anon, authenticated, service_role;

drop trigger distributed_messages_notify on public.distributed_messages;
drop function agent_runtime_private.on_messages_inserted();

create function agent_runtime_private.notify_sent(p_channel text, p_kind text, p_seq bigint,
                                                  p_messages public.distributed_messages[]) returns void
language plpgsql set search_path = '' as $$
declare
  v_topic text := case when p_kind = 'direct' then p_channel else 'channel:' || p_channel end;
  v_messages text;
  v_note text;
  v_notify boolean;
  v_realtime boolean;
begin
  if p_messages is not null then
    v_messages := agent_runtime_private.messages_json(p_messages, p_channel,
                                                      pg_catalog.array_fill(1, array[pg_catalog.cardinality(p_messages)]))::text;
    if octet_length(v_messages) < 6000 then  -- (headers count too)
      v_note := json_build_object(
        'c', p_channel, 's', p_seq, 'f', p_messages[1].seq, 'm', v_messages,
        'h', agent_runtime_private.wakeup_mac(v_topic || E'\n' || p_channel || E'\n' || p_messages[1].seq || E'\n' || v_messages)
      )::text;
      if octet_length(v_note) >= 7200 then
        v_note := null;  -- (quoting the messages as a string made it too big for pg_notify)
      end if;
    end if;
  end if;
  if v_note is null then
    v_note := json_build_object('c', p_channel, 's', p_seq)::text;
  end if;
  select w.notify, w.realtime into v_notify, v_realtime from agent_runtime_private.wakeup_routes w;
  if v_notify is not false then  -- (no row: notify, the plain-Postgres way)
    perform pg_catalog.pg_notify(agent_runtime_private.topic_channel(v_topic),
                                 left(v_note, -1) || ',"t":' || to_json(v_topic)::text || ',"e":"message"}');
  end if;
  if v_realtime then
    -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
    -- realtime.messages: only the channel's subscribers hear it). realtime.send never raises.
    perform realtime.send(v_note::jsonb, 'message', v_topic, true);
  end if;
end
$$;

revoke all on function agent_runtime_private.notify_sent(text, text, bigint, public.distributed_messages[]) from public, anon, authenticated, service_role;

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
  v_delayed boolean;
  v_bytes bigint;
  v_replies boolean;
  v_carry boolean;
  v_carried public.distributed_messages[];
  v_last bigint;
  v_now timestamptz;
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
           count(p.idempotency_key), bool_or(p.delay > interval '0'), sum(p.size_bytes),
           bool_and(p.reply_to is null and p.correlation_id is not null)
    into v_out, v_malformed, v_oversized, v_keys, v_delayed, v_bytes, v_replies
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
  -- either be ignored or hold back everything after it, so it is refused.
  if v_channel.kind = 'broadcast' and v_delayed then
    raise exception 'delay is for queue and direct channels; channel % is a broadcast channel', v_channel.name
      using errcode = 'AR400';
  end if;

  -- Whether the wake-up may carry the messages themselves (agent_runtime_private.notify_sent): on a
  -- broadcast channel, or replies to an inbox (the requester delivers a reply from its wake-up),
  -- when they are few, small and visible now. (With idempotency keys this is decided for the whole
  -- batch: the messages actually sent are a part of it.)
  v_carry := (v_channel.kind = 'broadcast' or (v_channel.kind = 'direct' and v_replies))
             and not coalesce(v_delayed, false) and v_count <= 16 and v_bytes < 6000;

  -- Taking the channel row lock serialises producers on this channel until commit, so seq order
  -- equals commit order. Everything above ran without it; what follows holds it until commit.
  if v_keys = 0 then
    -- (The clock is read once, in the UPDATE's RETURNING: after any wait for the row lock.)
    with numbered as (
      update public.communication_channels set last_seq = last_seq + v_count
      where id = v_channel.id
      returning last_seq, (select agent_runtime_private.clock()) as now
    ), inserted as (
      insert into public.distributed_messages as m (channel_id, seq, sender_id, payload, headers, size_bytes,
                                                    correlation_id, reply_to, expires_at, visible_at)
      select v_channel.id, n.last_seq - v_count + o.ord, p_agent_id, o.payload, o.headers,
             o.size_bytes, o.correlation_id, o.reply_to, n.now + coalesce(o.ttl, v_channel.message_ttl),
             n.now + coalesce(o.delay, interval '0')
      from numbered n cross join unnest(v_out) o
      returning m.id, m.seq, m
    )
    select jsonb_agg(jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', false) order by i.seq),
           array_agg(i.m order by i.seq) filter (where v_carry), max(i.seq)
    into v_result, v_carried, v_last from inserted i;
    if v_result is null then  -- the channel went away meanwhile
      raise exception 'unknown channel %', p_channel using errcode = 'AR405';
    end if;
    perform agent_runtime_private.notify_sent(v_channel.name, v_channel.kind, v_last, v_carried);
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
    returning last_seq, (select agent_runtime_private.clock()) into v_channel.last_seq, v_now;  -- (after the lock)

    with fresh as (
      select o.*, v_channel.last_seq - v_count + row_number() over (order by o.ord) as seq
      from unnest(v_out) o where o.existing_id is null and o.dup_of is null
    ), inserted as (
      insert into public.distributed_messages as m (channel_id, seq, sender_id, payload, headers, size_bytes,
                                                    correlation_id, reply_to, idempotency_key, expires_at,
                                                    visible_at)
      select v_channel.id, f.seq, p_agent_id, f.payload, f.headers, f.size_bytes, f.correlation_id,
             f.reply_to, f.idempotency_key, v_now + coalesce(f.ttl, v_channel.message_ttl),
             v_now + coalesce(f.delay, interval '0')
      from fresh f
      returning m.id, m.seq, m
    )
    select (select jsonb_agg(r.j order by r.ord) from (
      select f.ord, jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', false) as j
      from fresh f join inserted i on i.seq = f.seq
      union all
      select o.ord, jsonb_build_object('id', o.existing_id, 'seq', o.existing_seq, 'duplicate', true)
      from unnest(v_out) o where o.existing_id is not null
      union all
      select o.ord, jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', true)
      from unnest(v_out) o join fresh f on f.ord = o.dup_of join inserted i on i.seq = f.seq
    ) r), (select array_agg(i.m order by i.seq) filter (where v_carry) from inserted i), (select max(i.seq) from inserted i)
    into v_result, v_carried, v_last;
    if v_last is not null then  -- (nothing new was sent if every message was a duplicate)
      perform agent_runtime_private.notify_sent(v_channel.name, v_channel.kind, v_last, v_carried);
    end if;
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

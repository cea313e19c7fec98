-- Messages in wake-ups, and cheaper message JSON (found by benchmarks/: publish->deliver latency
-- and broadcast throughput).
--
-- * A broadcast wake-up carries the new messages themselves when they are few and small: the
--   statement's rows of that channel, contiguous in seq, all visible now (no delay), as at most
--   16 messages and under 6000 bytes of JSON (the whole pg_notify payload stays far below its
--   8000-byte limit, with room for realtime.send's envelope). The hint gains 'f' (first seq) and
--   'm' (the messages, exactly as fetch_messages returns them, attempts 1). A subscriber whose
--   last delivered seq is f - 1, with nothing owed before it, delivers them without a fetch;
--   anything else (a gap, a nack, a retry, a replay, a delay, a big batch) still fetches.
--   Queue and inbox wake-ups stay bare hints: their messages are claimed (SKIP LOCKED, visibility
--   timeouts). Realtime gets the same payload; its topics are authorised per subscriber by RLS.
-- * One definition of a message's JSON (message_row: a composite, so json_agg writes it without
--   building a jsonb tree per message): fetch_messages, claim_messages, the wake-up and
--   message_json (list_dead_letters) all use it. fetch_messages and claim_messages return json
--   (the same documents, about three times cheaper to build than jsonb_agg of jsonb objects).
-- * fetch_messages, ack_messages and send_messages keep generic plans (plan_cache_mode): with the
--   default, statements with array parameters (ack ids) were planned again on every call, which
--   cost more than running them. A generic plan is made once per session, possibly while the
--   tables are still empty, so every statement in them has one sensible access path whatever the
--   table sizes (enable_seqscan off; the ack's in-flight test written so that the claim index
--   cannot stand in for the ids' primary key look-up; replayed dead letters looked up by id).
--   tests/sql/test_wakeup_messages.py checks this on a session that planned on empty tables.
-- * send_messages: the sender and the channel in one look-up; TTL/delay converted only when
--   given; a batch without idempotency keys numbers and inserts its messages in one statement,
--   outside any subtransaction (only batches with keys need the unique_violation handler).
-- * ack_messages skips the queue update (and its statement trigger) when none of the messages is
--   in flight for the agent, which a broadcast subscriber's never are.
-- * fetch_messages and claim_messages take p_ack_ids (new): a consumer's acks ride along with its
--   next fetch, one round trip instead of two. send_messages keeps a batch in an array of a
--   composite type instead of a temporary table (catalog writes and re-plans on every call).
-- * Two changes of meaning: a delay on a broadcast channel is refused (it used to be ignored), and
--   claims compare visible_at with clock_timestamp() (see claim_messages).

create type agent_runtime_private.message_wire as (
  id bigint, channel text, seq bigint, sender_id text, payload jsonb, headers jsonb, size_bytes integer,
  correlation_id uuid, reply_to text, idempotency_key text, created_at timestamptz,
  expires_at timestamptz, attempts integer
);

create or replace function agent_runtime_private.message_row(m public.distributed_messages, p_channel text,
                                                             p_attempts integer)
returns agent_runtime_private.message_wire language sql stable as $$
  select row(m.id, p_channel, m.seq, m.sender_id, m.payload, m.headers, m.size_bytes, m.correlation_id,
             m.reply_to, m.idempotency_key, m.created_at, m.expires_at,
             p_attempts)::agent_runtime_private.message_wire
$$;

-- The same document as jsonb (list_dead_letters adds keys to it).
create or replace function agent_runtime_private.message_json(m public.distributed_messages, p_channel text,
                                                              p_attempts integer)
returns jsonb language sql stable as $$
  select to_jsonb(agent_runtime_private.message_row(m, p_channel, p_attempts))
$$;

drop function public.fetch_messages(text, text, integer);
drop function public.claim_messages(text, text, integer, bigint);

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

-- Acknowledges messages this agent received. Queue/inbox: only the current claimant's ack counts
-- (a stale ack after the message was handed to someone else is ignored). Broadcast: the ack is
-- cumulative, it moves the subscriber's cursor to the highest acked seq of that channel, and it
-- resolves replayed dead letters. Returns the number of messages acknowledged.
-- (As before; the queue update, and its statement trigger, run only when one of the messages is
-- in flight for this agent, which a broadcast message never is.)
create or replace function public.ack_messages(p_agent_id text, p_message_ids bigint[]) returns integer
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

-- New messages: one wake-up per statement and channel, delivered after commit. On a broadcast
-- channel it carries the messages themselves when they are few, small and visible now (see the
-- top of this file); otherwise, and on queues and inboxes, it is the bare hint {c, s}.
create or replace function agent_runtime_private.on_messages_inserted() returns trigger
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

grant execute on function agent_runtime_private.message_row(public.distributed_messages, text, integer)
  to authenticated, service_role;
grant execute on function agent_runtime_private.message_json(public.distributed_messages, text, integer)
  to authenticated, service_role;
revoke execute on function public.fetch_messages(text, text, integer, bigint[]) from public, anon;
revoke execute on function public.claim_messages(text, text, integer, bigint, bigint[]) from public, anon;
grant execute on function public.fetch_messages(text, text, integer, bigint[]) to authenticated, service_role;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[]) to authenticated, service_role;

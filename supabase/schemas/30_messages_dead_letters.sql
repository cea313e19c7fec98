-- agent_runtime declared schema, part 30: messages (send, fetch/claim, ack/nack) and dead letters.
-- Owns: distributed_messages, message_dead_letters; types message_wire (a message's document) and
-- outgoing_message (a batch being sent); messages_json, message_json; list_channels (it counts
-- messages), send_messages, send_message, fetch_messages, claim_messages, ack_messages,
-- nack_message, extend_visibility, list_dead_letters, replay_dead_letters, peek_messages.
--
-- Performance notes (benchmarks/): one definition of a message's JSON, messages_json, composites so
-- that json_agg writes it without building a jsonb tree per message; fetch_messages and
-- claim_messages return json. fetch_messages, ack_messages and send_messages keep generic plans
-- (plan_cache_mode) made once per session, possibly on empty tables, so every statement in them
-- has one sensible access path whatever the table sizes (enable_seqscan off; claim_messages and
-- ack_messages also enable_bitmapscan off: a queue filled faster than autovacuum analyses it was
-- planned as a bitmap scan of the whole channel, then sorted); see
-- tests/sql/test_wakeup_messages.py. send_messages keeps a batch in an array of outgoing_message
-- (a temporary table would cost catalog writes and re-plans on every call).

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
  unique (channel_id, seq),
  -- What the partial indexes below select on: null while the message is open (ready or in flight),
  -- then 'acked' or 'dead'. No index names state itself, so a claim (ready -> inflight), a nack and
  -- a visibility extension change no indexed column: HOT updates, no index entries written.
  outcome         text generated always as (case when state in ('acked', 'dead') then state end) stored
) with (fillfactor = 50);  -- (room on each page for a claim's new row version: HOT)
-- Claim scans ready or timed-out messages of one channel in seq order.
create index distributed_messages_claim_idx on public.distributed_messages (channel_id, seq)
  where outcome is null;
create unique index distributed_messages_idempotency_idx
  on public.distributed_messages (sender_id, idempotency_key) where idempotency_key is not null;
create index distributed_messages_expiry_idx on public.distributed_messages (expires_at)
  where expires_at is not null;
create index distributed_messages_created_idx on public.distributed_messages (created_at);
create index distributed_messages_dead_idx on public.distributed_messages (channel_id, id)
  where outcome = 'dead';

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

-- messages_json(p_messages, p_channel, p_attempts) -> json: messages as delivered (fetch, claim,
-- wake-ups, dead letters), in the arrays' order, p_attempts[i] the delivery attempt of
-- p_messages[i]; null for no messages. The one definition of a message's document (message_wire's
-- fields). It takes a batch, not one message, because a function with a pinned search_path is not
-- inlined: called once per message it cost the fetch path microseconds per message. PL/pgSQL, not
-- SQL: a SQL function that is not inlined plans its query again on every call (a claim of one
-- message spent a sixth of its server time there); PL/pgSQL keeps the plan for the session.
-- Raises: nothing of its own.
create function agent_runtime_private.messages_json(p_messages public.distributed_messages[], p_channel text,
                                                    p_attempts integer[])
returns json language plpgsql stable set search_path = '' as $$
begin
  return (select json_agg(row(m.id, p_channel, m.seq, m.sender_id, m.payload, m.headers, m.size_bytes, m.correlation_id,
                              m.reply_to, m.idempotency_key, m.created_at, m.expires_at,
                              p_attempts[m.ordinality])::agent_runtime_private.message_wire order by m.ordinality)
          from unnest(p_messages) with ordinality as m);
end
$$;
revoke all on function agent_runtime_private.messages_json(public.distributed_messages[], text, integer[]) from public, anon, authenticated, service_role;

-- message_json(m, p_channel, p_attempts) -> jsonb: one message's document as jsonb (list_dead_letters
-- adds keys to it).
-- Raises: nothing of its own.
create function agent_runtime_private.message_json(m public.distributed_messages, p_channel text,
                                                   p_attempts integer)
returns jsonb language sql stable set search_path = '' as $$
  select (agent_runtime_private.messages_json(array[m], p_channel, array[p_attempts]) -> 0)::jsonb
$$;
revoke all on function agent_runtime_private.message_json(public.distributed_messages, text, integer) from public, anon, authenticated, service_role;

-- list_channels() -> jsonb: every channel the caller may read (an agent token: not other agents'
-- inboxes) with its settings, online subscribers, ready/in-flight and dead message counts.
-- Raises: nothing of its own.
create function public.list_channels() returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(agent_runtime_private.channel_json(c) || jsonb_build_object(
           'subscribers', (select count(*) from public.channel_subscriptions s
                           join public.agent_presence p on p.agent_id = s.agent_id
                           where s.channel_id = c.id and p.status <> 'offline' and p.expires_at > (select agent_runtime_private.clock())),
           'ready', (select count(*) from public.distributed_messages m
                     where m.channel_id = c.id and m.outcome is null
                       and c.kind <> 'broadcast'),
           'dead', (select count(*) from public.distributed_messages m
                    where m.channel_id = c.id and m.outcome = 'dead'))
         order by c.name), '[]'::jsonb)
  from public.communication_channels c
  -- What RLS lets the caller read: an agent token sees no other agent's inbox.
  -- (Scalar subqueries: evaluated once per call, not per row.)
  where c.kind <> 'direct' or (select agent_runtime_private.is_trusted())
     or c.owner_id = (select agent_runtime_private.jwt_agent_id())
$$;
revoke all on function public.list_channels() from public, anon, authenticated;
grant execute on function public.list_channels() to authenticated, service_role;

-- Sends a batch to one channel. p_messages is a JSON array of objects with 'payload' and optional
-- 'headers', 'idempotency_key', 'correlation_id', 'reply_to', 'ttl_ms', 'delay_ms'. A message whose
-- (sender, idempotency_key) was already sent is not sent again; its original id is returned with
-- duplicate = true. All or nothing: one bad message refuses the batch.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR408 concurrent conflict, retry; AR413 payload too large.
create function public.send_messages(p_agent_id text, p_channel text, p_messages jsonb)
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
  -- A release or an inbox claim with p_durable => false earlier in this transaction turned its
  -- commit asynchronous (see release_lock): a send (or an acquire, which issues a fencing token)
  -- commits durably whatever came before it, so the setting they saved is restored here.
  if pg_catalog.current_setting('agent_runtime.durable_commit', true) <> '' then
    perform pg_catalog.set_config('synchronous_commit', pg_catalog.current_setting('agent_runtime.durable_commit'), true);
    perform pg_catalog.set_config('agent_runtime.durable_commit', '', true);
  end if;
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

-- send_message(p_agent_id, p_channel, p_payload, p_headers, p_idempotency_key, p_correlation_id,
-- p_reply_to, p_ttl_ms, p_delay_ms) -> jsonb: one message through send_messages; returns {id, seq,
-- duplicate}.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR408 concurrent conflict, retry; AR413 payload too large.
create function public.send_message(
  p_agent_id text, p_channel text, p_payload jsonb, p_headers jsonb default '{}'::jsonb,
  p_idempotency_key text default null, p_correlation_id uuid default null,
  p_reply_to text default null, p_ttl_ms bigint default null, p_delay_ms bigint default null
) returns jsonb
language sql security definer set search_path = '' as $$
  select public.send_messages(p_agent_id, p_channel, jsonb_build_array(jsonb_strip_nulls(
    jsonb_build_object('payload', p_payload, 'headers', coalesce(p_headers, '{}'::jsonb),
                       'idempotency_key', p_idempotency_key, 'correlation_id', p_correlation_id,
                       'reply_to', p_reply_to, 'ttl_ms', p_ttl_ms, 'delay_ms', p_delay_ms))
    || case when p_payload = 'null'::jsonb then jsonb_build_object('payload', 'null'::jsonb)
            else '{}'::jsonb end)) -> 0
$$;
revoke all on function public.send_message(text, text, jsonb, jsonb, text, uuid, text, bigint, bigint) from public, anon, authenticated;
grant execute on function public.send_message(text, text, jsonb, jsonb, text, uuid, text, bigint, bigint) to authenticated, service_role;

-- Broadcast: the next messages after this subscriber's cursor, in seq order, replayed dead letters
-- first. Head-of-line retry: while a nacked message waits for its retry time nothing is returned.
-- p_ack_ids (optional): acknowledge these first, in the same transaction (ack_messages), so a
-- consumer's acks ride along with its next fetch: one round trip instead of two.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR412 channel kind mismatch.
create function public.fetch_messages(p_agent_id text, p_channel text, p_limit integer default 100,
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

-- ack_claims(p_agent_id, p_message_ids, p_channel) -> integer: the queue/inbox half of
-- ack_messages, for a channel already looked up (claim_messages writes the acks riding on a claim
-- with it, without a second call, check and look-up). Acks this agent's claims of that channel,
-- and the replies in its own inbox it took from their (signed) wake-ups without claiming them
-- (never claimed, so no one else holds them). Its callers set the planner settings it relies on.
-- (coalesce: a plan cached when the table was small must not scan the claim index instead of
-- looking the ids up.)
-- Raises: nothing of its own.
create function agent_runtime_private.ack_claims(p_agent_id text, p_message_ids bigint[],
                                                 p_channel public.communication_channels)
returns integer
language plpgsql set search_path = '' as $$
declare
  v_acked integer;
begin
  update public.distributed_messages m set state = 'acked', acked_at = (select agent_runtime_private.clock()), claimed_by = p_agent_id
  where m.id = any (p_message_ids) and m.channel_id = p_channel.id
    and ((coalesce(m.state, '') = 'inflight' and m.claimed_by = p_agent_id)
         or (coalesce(m.state, '') = 'ready' and m.attempts = 0 and m.reply_to is null
             and m.correlation_id is not null and p_channel.kind = 'direct' and p_channel.owner_id = p_agent_id));
  get diagnostics v_acked = row_count;
  return v_acked;
end
$$;
revoke all on function agent_runtime_private.ack_claims(text, bigint[], public.communication_channels) from public, anon, authenticated, service_role;

-- claim_messages (and fetch_messages, for a retry) compare visible_at with the clock read while
-- they run (agent_runtime_private.clock()), not with now().
--
-- now() is the claiming transaction's start time, and it may be earlier than the start of a sender
-- whose commit the claim's snapshot already sees: a claim made right after a wake-up then skipped
-- the message it was woken for (visible_at, the sender's now(), looked a few milliseconds in the
-- future), and since that wake-up was the only one, the message waited for the next safety poll.
-- Seen in tests/failure/test_bad_input_api.py: a claim whose now() was 9 ms before the sender's
-- visible_at, with statement_timestamp() and (select agent_runtime_private.clock()) after it and the sender's xid
-- committed in its snapshot. The same holds for a nack with no delay (visible_at is the nacker's
-- now()). (select agent_runtime_private.clock()) in the statement is read after its snapshot was taken, so after every
-- commit it sees, and so after the start of every sender it sees.
--
-- Queue and inbox: claims up to p_limit visible messages in seq order for p_visibility_ms.
-- A claimed message whose visibility timed out is claimable again; one that has used up its
-- attempts goes to the dead letters instead, when a claim's own scan meets it (it would have been
-- claimed next): no claim scans the channel for them, so a claim costs the same at any depth.
-- SKIP LOCKED: concurrent consumers never get the same message and never wait on each other.
-- p_ack_ids (optional): acknowledge these first, in the same transaction, as fetch_messages does.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR412 channel kind mismatch.
create function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
                                      p_visibility_ms bigint default null, p_ack_ids bigint[] default null,
                                      p_classes text[] default null)
returns json
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off set enable_bitmapscan = off as $$
declare
  v_channel public.communication_channels;
  v_visibility interval;
  v_result json;
  v_batch json;
  v_claimed integer;
  v_total integer := 0;
  v_spent bigint[];
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
  if p_ack_ids is not null and cardinality(p_ack_ids) > 10000 then
    raise exception 'message ids must be an array of at most 10000' using errcode = 'AR400';
  end if;
  if v_channel.kind = 'broadcast' then
    raise exception 'channel % is a broadcast channel: fetch its messages', p_channel using errcode = 'AR412';
  end if;
  if p_ack_ids is not null then  -- (as ack_messages would, in this transaction)
    perform agent_runtime_private.ack_claims(p_agent_id, p_ack_ids, v_channel);
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
      where m.channel_id = v_channel.id and m.outcome is null and m.visible_at <= (select agent_runtime_private.clock())
        and (m.expires_at is null or m.expires_at > (select agent_runtime_private.clock()))
        and (p_classes is null
             or (m.reply_to is not null and 'request' = any (p_classes))
             or (m.reply_to is null and m.correlation_id is not null and 'reply' = any (p_classes))
             or (m.reply_to is null and m.correlation_id is null and 'plain' = any (p_classes)))
      order by m.seq
      limit p_limit - v_total
      for update skip locked
    ), claimed as (
      update public.distributed_messages m set state = 'inflight', attempts = m.attempts + 1,
                                               claimed_by = p_agent_id, visible_at = (select agent_runtime_private.clock()) + v_visibility
      from picked where m.id = picked.id and not picked.spent
      returning m as msg, m.seq as seq, m.attempts as attempts
    )
    select agent_runtime_private.messages_json(array_agg(c.msg order by c.seq), v_channel.name,
                                               array_agg(c.attempts order by c.seq)),
           count(*), (select array_agg(p.id) from picked p where p.spent)
    into v_batch, v_claimed, v_spent from claimed c;
    if v_spent is not null then  -- (rare: a second statement, so a claim does not prepare it)
      -- Spent timed-out claims that this scan met, and locked: to the dead letters.
      update public.distributed_messages m set state = 'dead', last_error = coalesce(m.last_error, 'visibility timeout'),
                                               claimed_by = null
      where m.id = any (v_spent);
    end if;
    v_result := case when v_result is null then v_batch
                     when v_batch is null then v_result
                     else (v_result::jsonb || v_batch::jsonb)::json end;
    v_total := v_total + v_claimed;
    -- (a batch that lost rows to the dead letters looks further: a short batch means no more)
    exit when v_spent is null or v_total >= p_limit;
  end loop;
  return coalesce(v_result, '[]'::json);
end
$$;
revoke all on function public.claim_messages(text, text, integer, bigint, bigint[], text[]) from public, anon, authenticated;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[], text[]) to authenticated, service_role;

-- Acknowledges messages this agent received. Queue/inbox: only the current claimant's ack counts
-- (a stale ack after the message was handed to someone else is ignored). Broadcast: the ack is
-- cumulative, it moves the subscriber's cursor to the highest acked seq of that channel, and it
-- resolves replayed dead letters. Returns the number of messages acknowledged.
-- With p_channel (the runtime always names it) only the part for that channel's kind runs: a queue
-- ack is one UPDATE of its rows, and a broadcast ack never looks for claims.
-- Raises: AR400 invalid input; AR403 not allowed.
create function public.ack_messages(p_agent_id text, p_message_ids bigint[], p_channel text default null)
returns integer
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off set enable_bitmapscan = off as $$
declare
  v_acked integer := 0;
  v_n integer;
  v_channel public.communication_channels;
  v_channel_id bigint;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_message_ids is null or cardinality(p_message_ids) > 10000 then
    raise exception 'message ids must be an array of at most 10000' using errcode = 'AR400';
  end if;
  if p_channel is not null then
    v_channel := agent_runtime_private.channel(p_channel);
    v_channel_id := v_channel.id;
  end if;

  -- Queues and inboxes (see ack_claims); without a channel, of any channel (the same, joined).
  if v_channel_id is not null and v_channel.kind <> 'broadcast' then
    -- (no broadcast message and no broadcast dead letter is of this channel)
    return agent_runtime_private.ack_claims(p_agent_id, p_message_ids, v_channel);
  elsif v_channel_id is null then
    update public.distributed_messages m set state = 'acked', acked_at = (select agent_runtime_private.clock()), claimed_by = p_agent_id
    from public.communication_channels c
    where m.id = any (p_message_ids) and c.id = m.channel_id and c.kind <> 'broadcast'
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

-- Negative acknowledgement: the message is redelivered after p_delay_ms, or goes to the dead
-- letters once it has used the channel's max attempts (or at once with p_dead => true, for a
-- payload that can never be processed). Returns {state: 'retry'|'dead'|'ignored', attempts,
-- retry_at}. 'ignored' means this agent no longer holds the message. p_release => true hands back
-- a queue/inbox message that was claimed but never handed to a handler (a consumer closing with
-- a prefetched batch): the claim does not count as an attempt, so it can never dead-letter it.
-- Raises: AR400 invalid input; AR403 not allowed; AR406 unknown message.
create function public.nack_message(p_agent_id text, p_message_id bigint, p_delay_ms bigint default 0,
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

-- Extends the visibility of messages this agent holds (a long handler keeps its claim).
-- Raises: AR400 invalid input; AR403 not allowed.
create function public.extend_visibility(p_agent_id text, p_message_ids bigint[], p_visibility_ms bigint)
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

-- Dead letters of queues/inboxes (state on the message) and of broadcast subscribers (one row per
-- subscriber), newest first.
-- Raises: AR400 invalid input; AR404 unknown agent; AR405 unknown channel or not subscribed.
create function public.list_dead_letters(p_channel text default null, p_limit integer default 100)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_channel_id bigint;
  v_result jsonb;
  v_trusted boolean := agent_runtime_private.is_trusted();
  v_me text := agent_runtime_private.jwt_agent_id();
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
      from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id
      where m.outcome = 'dead' and (v_channel_id is null or m.channel_id = v_channel_id)
        -- What RLS lets an agent token read: its inbox and the channels it subscribes to.
        and (v_trusted or c.owner_id = v_me
             or exists (select 1 from public.channel_subscriptions s where s.channel_id = c.id and s.agent_id = v_me))
      union all
      select m.id, dl.dead_at,
             agent_runtime_private.message_json(m, c.name, dl.attempts)
             || jsonb_build_object('dead_letter_id', dl.id, 'subscriber_id', dl.agent_id,
                                   'reason', dl.reason)
      from public.message_dead_letters dl
      join public.distributed_messages m on m.id = dl.message_id
      join public.communication_channels c on c.id = m.channel_id
      where dl.state = 'dead' and (v_channel_id is null or m.channel_id = v_channel_id)
        and (v_trusted or dl.agent_id = v_me)  -- an agent token: its own dead letters only
    ) d order by d.dead_at desc, d.id desc limit p_limit
  ) x;
  return v_result;
end
$$;
revoke all on function public.list_dead_letters(text, integer) from public, anon, authenticated;
grant execute on function public.list_dead_letters(text, integer) to authenticated, service_role;

-- Replays dead letters by message id: a queue message becomes ready again with fresh attempts;
-- a broadcast dead letter is delivered again to the subscriber it died for. Returns the count.
-- Raises: AR400 invalid input; AR403 not allowed.
create function public.replay_dead_letters(p_agent_id text, p_message_ids bigint[]) returns integer
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

-- peek_messages: read a channel's messages by seq without consuming them: no cursor moves, nothing
-- is claimed or acked (the CLI's `tail` follows a broadcast or queue channel with it). Trusted
-- callers only (a direct login or the service role), since it shows every payload of the channel.
-- Sequence order is commit order (seq is taken under the channel row's lock), so a reader that
-- asks for seq > its last one never skips a message that committed late.
create function public.peek_messages(p_channel text, p_after_seq bigint default 0,
                                                p_limit integer default 100)
returns json
language plpgsql stable security definer set search_path = '' as $$
declare
  v_channel public.communication_channels;
  v_result json;
begin
  if not agent_runtime_private.is_trusted() then
    raise exception 'reading a channel without consuming it needs a trusted connection' using errcode = 'AR403',
      hint = 'use the service role key or a direct database login';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'AR400';
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  select coalesce(json_agg(json_build_object(
           'id', m.id, 'channel', v_channel.name, 'seq', m.seq, 'sender_id', m.sender_id, 'payload', m.payload,
           'headers', m.headers, 'size_bytes', m.size_bytes, 'correlation_id', m.correlation_id,
           'reply_to', m.reply_to, 'idempotency_key', m.idempotency_key, 'created_at', m.created_at,
           'expires_at', m.expires_at, 'attempts', m.attempts) order by m.seq), '[]'::json)
    into v_result
    from (select * from public.distributed_messages d
           where d.channel_id = v_channel.id and d.seq > coalesce(p_after_seq, 0)
           order by d.seq limit p_limit) m;
  return v_result;
end
$$;

revoke all on function public.peek_messages(text, bigint, integer) from public, anon, authenticated;
grant execute on function public.peek_messages(text, bigint, integer) to service_role;

-- reply_to_request(p_agent_id, p_request_id, p_channel, p_messages) -> jsonb: a responder's answer
-- in one statement and one transaction: the reply (p_messages, sent to p_channel exactly as
-- send_messages sends them, through it) and the ack of the request p_request_id it answers, a
-- request in p_agent_id's own inbox that p_agent_id holds the claim of (as ack_messages would
-- ack it: a claim handed to someone else meanwhile is not acked). Both or neither: a reply that is
-- refused (too large, an unknown requester...) raises and leaves the request unacked, as it was.
-- A request not held (any more) is not acked and the reply is sent all the same, as before this
-- function. Returns {acked: 0 or 1, sent: send_messages' result}. (Before it, the ack rode along
-- with the responder's next claim, or took a commit of its own when no claim came within 100 ms.)
-- Raises: what send_messages raises; AR400 invalid input; AR403 not allowed.
create function public.reply_to_request(p_agent_id text, p_request_id bigint, p_channel text, p_messages jsonb)
returns jsonb
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off set enable_bitmapscan = off as $$
declare
  v_inbox public.communication_channels;
  v_sent jsonb;
  v_acked integer := 0;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_request_id is null then
    raise exception 'the request id is required' using errcode = 'AR400';
  end if;
  v_sent := public.send_messages(p_agent_id, p_channel, p_messages);
  select * into v_inbox from public.communication_channels c
  where c.name = 'agent:' || p_agent_id and c.kind = 'direct' and c.owner_id = p_agent_id;
  if found then  -- (ack_claims: only this agent's claim of a message of its own inbox)
    v_acked := agent_runtime_private.ack_claims(p_agent_id, array[p_request_id], v_inbox);
  end if;
  return jsonb_build_object('acked', v_acked, 'sent', v_sent);
end
$$;
revoke all on function public.reply_to_request(text, bigint, text, jsonb) from public, anon, authenticated;
grant execute on function public.reply_to_request(text, bigint, text, jsonb) to authenticated, service_role;

-- claim_inbox(p_agent_id, p_limit, p_visibility_ms, p_ack_ids, p_classes, p_durable) -> json: the
-- caller's own inbox claimed as claim_messages claims it (same checks, answer and acks riding
-- along; the inbox is always 'agent:' || p_agent_id). p_durable => false (how the runtime claims
-- its inbox, alone in the call's transaction): when the claim is the first write of its
-- transaction, that transaction commits without waiting for its WAL flush, so the responder's
-- claim of a request no longer waits for a flush on the request/reply round trip. A claim lost
-- that way (the server crashes before the WAL writer flushes it) is harmless: the WAL is flushed
-- in order and every later durable commit flushes it first, so a lost claim takes with it every
-- write that came after it (the reply and the ack of that request, which are durable, included:
-- a requester is only ever answered by a reply that survives, and with it its claim); the state
-- recovered is the one before the claim, a request ready with its attempts as they were, and it is
-- claimed and answered again (at-least-once; a crash of the server is no failed attempt of the
-- request). Acks riding on the claim, lost the same way, redeliver replies nobody waits for any
-- more (dropped) or inbox messages (at-least-once). No claim issues a fencing token, and sends
-- stay durable. Writes of the same transaction after the claim share its commit (but a send or an
-- acquire restores the durable commit first: see agent_runtime.durable_commit in send_messages):
-- a caller that wants them durable keeps the default (p_durable => true).
-- Raises: what claim_messages raises.
create function public.claim_inbox(p_agent_id text, p_limit integer default 10, p_visibility_ms bigint default null,
                                   p_ack_ids bigint[] default null, p_classes text[] default null,
                                   p_durable boolean default true)
returns json
language plpgsql set search_path = '' as $$
begin
  if p_durable is false and pg_catalog.pg_current_xact_id_if_assigned() is null then
    -- (the setting a send or an acquire later in this transaction restores: only this write,
    -- never theirs, may skip the flush)
    perform pg_catalog.set_config('agent_runtime.durable_commit', pg_catalog.current_setting('synchronous_commit'), true);
    perform pg_catalog.set_config('synchronous_commit', 'off', true);
  end if;
  return public.claim_messages(p_agent_id, 'agent:' || p_agent_id, p_limit, p_visibility_ms, p_ack_ids, p_classes);
end
$$;
revoke all on function public.claim_inbox(text, integer, bigint, bigint[], text[], boolean) from public, anon, authenticated;
grant execute on function public.claim_inbox(text, integer, bigint, bigint[], text[], boolean) to authenticated, service_role;

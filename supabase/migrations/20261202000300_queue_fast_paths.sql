-- Queue fast paths (issue 13): a claim costs the same at any depth, and claims and acks do no
-- trigger work when nothing needs waking.
-- * claim_messages no longer sweeps the channel's in-flight messages for spent timed-out claims
--   before every claim (a scan as long as the queue); its own picked scan sends the spent ones it
--   meets to the dead letters and goes on past them.
-- * claim_messages and ack_messages plan their look-ups as ordered index scans whatever the table's
--   statistics say (a queue filled faster than autovacuum analyses it was planned as a bitmap scan
--   of the whole channel, sorted: a claim as long as the queue).
-- * inbox wake-ups carry replies (signed as broadcast ones are), and ack_messages takes the ack of
--   a reply that was taken from its wake-up, never claimed: a request/reply costs no claim on the
--   requester's side.
-- * acquire_lock with a wait queues its waiters in the database, first come first served, and the
--   first one takes the lease within milliseconds of its release (lock hand-over without a poll).
-- * on_messages_ready becomes a row trigger on UPDATE OF state WHEN the row becomes ready: claims,
--   acks and extend_visibility no longer run a statement trigger with transition tables.

drop function public.claim_messages(text, text, integer, bigint, bigint[], text[]);
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
      where m.channel_id = v_channel.id and m.state in ('ready', 'inflight') and m.visible_at <= clock_timestamp()
        and (m.expires_at is null or m.expires_at > clock_timestamp())
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
                                               claimed_by = p_agent_id, visible_at = clock_timestamp() + v_visibility
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

-- Acknowledges messages this agent received. Queue/inbox: only the current claimant's ack counts
-- (a stale ack after the message was handed to someone else is ignored). Broadcast: the ack is
-- cumulative, it moves the subscriber's cursor to the highest acked seq of that channel, and it
-- resolves replayed dead letters. Returns the number of messages acknowledged.
-- (As before; the queue update, and its statement trigger, run only when one of the messages is
-- in flight for this agent, which a broadcast message never is.)
-- Raises: AR400 invalid input; AR403 not allowed.
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
    update public.distributed_messages m set state = 'acked', acked_at = clock_timestamp(), claimed_by = p_agent_id
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
      updated_at = clock_timestamp()
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

drop trigger distributed_messages_ready_notify on public.distributed_messages;
drop function agent_runtime_private.on_messages_ready();
-- A nack, a hand-back or a replay makes a message ready again: wake its consumers. A row trigger
-- with a WHEN clause on the state column: claims, acks and visibility extensions never run it
-- (a statement trigger with transition tables ran, and captured every updated row, on all of them).
-- A replay of many messages sends one wake-up per message (pg_notify folds identical ones).
-- Raises: nothing of its own.
create function agent_runtime_private.on_messages_ready() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_name text;
  v_kind text;
begin
  select c.name, c.kind into v_name, v_kind from public.communication_channels c where c.id = new.channel_id;
  perform agent_runtime_private.notify(
    case when v_kind = 'direct' then v_name else 'channel:' || v_name end,
    'message', jsonb_build_object('c', v_name, 's', new.seq));
  return null;
end
$$;
create trigger distributed_messages_ready_notify after update of state on public.distributed_messages
  for each row when (new.state = 'ready' and old.state <> 'ready')
  execute function agent_runtime_private.on_messages_ready();
revoke all on function agent_runtime_private.on_messages_ready() from public, anon, authenticated, service_role;

-- New messages: one wake-up per statement and channel, delivered after commit. On a broadcast
-- channel, and on an inbox for replies (a batch of replies only: the requester delivers a reply
-- from its wake-up and acks it without claiming it, see ack_messages), it carries the messages
-- themselves when they are few, small and visible now (see the top of this file); otherwise, and
-- on queues (where carrying a message cannot claim it), it is the bare hint {c, s}.
-- Raises: nothing of its own.
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
           bool_and(n.visible_at <= clock_timestamp()) as visible, sum(n.size_bytes) as payload_bytes,
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

-- Takes the lease on p_key if it is free or expired (or already held by this same lease, which
-- extends it). Every new holder gets a fresh fencing token from a global sequence, so tokens
-- strictly increase per key across owners. Returns {acquired, token, expires_at, owner_id, ttl_ms};
-- when not acquired, ttl_ms says how long the current holder's lease still runs.
-- Waiting (p_wait_ms > 0): waiters queue in the database, first come
-- first served (a transaction advisory lock per key, which Postgres grants in arrival order), and
-- the first in the queue watches the lease row every 2 ms, so it takes the lease within a few
-- milliseconds of its release or expiry, with no poll or notification round trip, and the others
-- wait their turn instead of racing for it. The wait writes nothing (no commit flush).
-- Raises: AR400 invalid input; AR401 invalid name; AR403 not allowed; AR404 unknown agent.
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
  if found and v_lock.expires_at > clock_timestamp()
     and not (v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id) then
    if coalesce(p_wait_ms, 0) <= 0 then
      return agent_runtime_private.lock_json(v_lock, false);
    end if;
  end if;
  if coalesce(p_wait_ms, 0) > 0 then
    -- (a waiting caller queues even for a free lease: one that just released it cannot take it
    -- again ahead of those waiting)
    v_until := clock_timestamp() + v_wait;
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
      exit when not found or v_lock.expires_at <= clock_timestamp()
                or (v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id);
      if clock_timestamp() >= v_until then
        return agent_runtime_private.lock_json(v_lock, false);
      end if;
      perform pg_catalog.pg_sleep(least(0.002, extract(epoch from v_until - clock_timestamp())));
    end loop;
    v_wait_ms := greatest((extract(epoch from v_until - clock_timestamp()) * 1000)::bigint, 0);
  end if;

  begin  -- (a subtransaction: a lock wait that times out ends here, and its lock_timeout with it)
    if v_wait is not null then
      -- lock_timeout 0 would mean "wait forever": a zero wait is the shortest one.
      perform pg_catalog.set_config('lock_timeout', greatest(v_wait_ms, 1)::text || 'ms', true);
    end if;
    loop
      select * into v_lock from public.distributed_locks where key = p_key for update;
      if not found then
        insert into public.distributed_locks as l (key, owner_id, lease_id, token, acquired_at, renewed_at,
                                                   expires_at, metadata)
        values (p_key, p_agent_id, p_lease_id, nextval('public.distributed_locks_token_seq'), clock_timestamp(),
                clock_timestamp(), clock_timestamp() + v_ttl, coalesce(p_metadata, '{}'::jsonb))
        on conflict (key) do nothing
        returning * into v_lock;
        v_acquired := found;
        exit when v_acquired;
        continue;  -- inserted concurrently: lock that row and decide again
      end if;
      v_now := clock_timestamp();  -- after the wait for the row
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

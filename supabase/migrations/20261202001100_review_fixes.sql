-- Review fixes (issue 13's new paths under failure).
-- release_lock and claim_inbox with p_durable => false turn their transaction's commit
-- asynchronous when they are its first write; a send or an acquire called after them in the same
-- transaction (a caller's own transaction) shared that commit, so a crash could lose a send, or an
-- acquire whose fencing token would then be handed out again. Now they save the session's
-- synchronous_commit in agent_runtime.durable_commit (transaction-local), and send_messages (and
-- with it send_message and reply_to_request) and acquire_lock restore it first: only the release
-- or the claim itself can be non-durable.

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
  v_first timestamptz;
  v_wait_ms bigint := p_wait_ms;
begin
  -- A release or an inbox claim with p_durable => false earlier in this transaction turned its
  -- commit asynchronous (see release_lock): a send (or an acquire, which issues a fencing token)
  -- commits durably whatever came before it, so the setting they saved is restored here.
  if pg_catalog.current_setting('agent_runtime.durable_commit', true) <> '' then
    perform pg_catalog.set_config('synchronous_commit', pg_catalog.current_setting('agent_runtime.durable_commit'), true);
    perform pg_catalog.set_config('agent_runtime.durable_commit', '', true);
  end if;
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
    -- ('ARLK', the key). Nobody queued: first at once, without the subtransaction of a wait.
    if not pg_catalog.pg_try_advisory_xact_lock(1095910475, pg_catalog.hashtext(p_key)) then
      begin  -- (a subtransaction: a queue wait that times out ends here; the lock, once got, is kept)
        perform pg_catalog.set_config('lock_timeout', p_wait_ms::text || 'ms', true);
        perform pg_catalog.pg_advisory_xact_lock(1095910475, pg_catalog.hashtext(p_key));
        perform pg_catalog.set_config('lock_timeout', v_saved_lock_timeout, true);
      exception when lock_not_available then
        select * into v_lock from public.distributed_locks where key = p_key;
        return agent_runtime_private.lock_json(v_lock, false);
      end;
    end if;
    v_first := (select agent_runtime_private.clock());
    loop  -- first in the queue: watch the lease until it is released or expires
      select * into v_lock from public.distributed_locks where key = p_key;
      exit when not found or v_lock.expires_at <= agent_runtime_private.clock()
                or (v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id);
      if agent_runtime_private.clock() >= v_until then
        return agent_runtime_private.lock_json(v_lock, false);
      end if;
      perform pg_catalog.pg_sleep(least(0.002, greatest(0.0002, extract(epoch from (select agent_runtime_private.clock()) - v_first) / 8),
                                        extract(epoch from v_until - (select agent_runtime_private.clock()))));
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

create or replace function public.release_lock(p_agent_id text, p_key text, p_lease_id uuid, p_durable boolean default true)
returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  v_released boolean;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_durable is false and pg_catalog.pg_current_xact_id_if_assigned() is null then
    -- (the setting a send or an acquire later in this transaction restores: only this write,
    -- never theirs, may skip the flush)
    perform pg_catalog.set_config('agent_runtime.durable_commit', pg_catalog.current_setting('synchronous_commit'), true);
    perform pg_catalog.set_config('synchronous_commit', 'off', true);
  end if;
  -- (the delete trigger leaves this release's hint to the code below)
  perform pg_catalog.set_config('agent_runtime.releasing_lock', p_key, true);
  delete from public.distributed_locks
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id and expires_at > (select agent_runtime_private.clock());
  v_released := found;
  perform pg_catalog.set_config('agent_runtime.releasing_lock', '', true);
  -- A free queue lock stays taken until this commits: an acquire that comes meanwhile queues,
  -- then finds the lease released.
  if v_released and pg_catalog.pg_try_advisory_xact_lock(1095910475, pg_catalog.hashtext(p_key)) then
    perform agent_runtime_private.notify('locks', 'released', jsonb_build_object('k', p_key));
  end if;
  return v_released;
end
$$;
revoke all on function public.release_lock(text, text, uuid, boolean) from public, anon, authenticated;
grant execute on function public.release_lock(text, text, uuid, boolean) to authenticated, service_role;

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

create or replace function public.claim_inbox(p_agent_id text, p_limit integer default 10, p_visibility_ms bigint default null,
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

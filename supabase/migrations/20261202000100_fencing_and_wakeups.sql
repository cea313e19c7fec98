-- Locks that really fence (issue 11).
--
-- * Every expiry and visibility is computed from the clock at the moment of the decision,
--   clock_timestamp() read after any wait for a row lock, never now() (the transaction's start):
--   a successor that waited for a paused holder's fencing transaction was granted a lease that
--   had already expired (acquire_lock, renew_lock, release_lock, check_fencing_token, lock_json;
--   claim_messages, nack_message, extend_visibility).
-- * acquire_lock takes p_wait_ms: the longest it waits for the lock row (lock_timeout, for this
--   call only); after that it answers "not acquired" instead of waiting on a wedged holder.
-- * check_fencing_token key-share-locks the lock row until the caller's transaction ends: a
--   successor's acquire (FOR UPDATE) waits for the guarded write to commit or roll back, while
--   the holder's own renewals (which change no key column) go on. It also bounds how long that
--   transaction may sit idle (idle_in_transaction_session_timeout, for that transaction only):
--   a holder paused or wedged inside it is disconnected by the server once the lease's remaining
--   time plus one TTL has passed, so its locks are released and its write is not committed.

-- ---------------------------------------------------------------------------------------------
-- Locks
-- ---------------------------------------------------------------------------------------------

create or replace function agent_runtime_private.lock_json(l public.distributed_locks, p_acquired boolean)
returns jsonb language sql volatile set search_path = '' as $$
  select jsonb_build_object('key', l.key, 'acquired', p_acquired, 'owner_id', l.owner_id,
                            'lease_id', case when p_acquired then l.lease_id end,
                            'token', case when p_acquired then l.token end,
                            'acquired_at', l.acquired_at, 'expires_at', l.expires_at,
                            'ttl_ms', greatest(0, (extract(epoch from l.expires_at - clock_timestamp()) * 1000)::bigint))
$$;
revoke all on function agent_runtime_private.lock_json(public.distributed_locks, boolean)
  from public, anon, authenticated, service_role;

drop function public.acquire_lock(text, text, uuid, bigint, jsonb);

-- Takes the lease on p_key if it is free or expired (or already held by this same lease, which
-- extends it). Every new holder gets a fresh fencing token from a global sequence, so tokens
-- strictly increase per key across owners. Returns {acquired, token, expires_at, owner_id, ttl_ms};
-- when not acquired, ttl_ms says how long the current holder's lease still runs.
-- A try refused because another live lease holds the key writes and locks nothing. Otherwise the
-- row is locked first (FOR UPDATE: this waits for a fencing transaction of the previous holder to
-- end), and the decision and the new expiry use the clock read after that wait.
-- p_wait_ms: wait at most this long for the row lock (null: as long as it takes), then answer
-- "not acquired".
create function public.acquire_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint,
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
    return agent_runtime_private.lock_json(v_lock, false);
  end if;

  begin  -- (a subtransaction: a lock wait that times out ends here, and its lock_timeout with it)
    if v_wait is not null then
      -- lock_timeout 0 would mean "wait forever": a zero wait is the shortest one.
      perform pg_catalog.set_config('lock_timeout', greatest(p_wait_ms, 1)::text || 'ms', true);
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

-- Extends a held lease. Raises AR409 if this lease does not hold the key (never held, released,
-- expired, or taken over): the holder must stop acting as owner. The new expiry is computed from
-- the clock read after the row is locked (a successor's acquire may hold it for a moment).
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
  v_now := clock_timestamp();
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

-- Releases a held lease; returns false if it was not held (already expired or taken over).
create or replace function public.release_lock(p_agent_id text, p_key text, p_lease_id uuid) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  delete from public.distributed_locks
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id and expires_at > clock_timestamp();
  return found;
end
$$;

-- Fencing check for a protected write: raises AR422 unless p_token is the live holder's token.
-- Call it inside the transaction that writes, before the write (from Python:
-- ``async with lease.fenced(connection)``; over PostgREST or from another language: in the same
-- transaction as the write, e.g. inside your own function that writes). The lock row is
-- key-share-locked until that transaction ends, so no one can take the lease over between the
-- check and the commit (a successor's acquire waits for it): writes never go back to an older
-- token. A check in another transaction than the write guards nothing.
-- The rest of the transaction may sit idle (between statements) for at most the lease's remaining
-- time plus one TTL; then the server ends the session (idle_in_transaction_session_timeout, set
-- for this transaction only, never raised above a smaller value already in force): a holder
-- paused or wedged inside its fencing transaction cannot keep its successor waiting.
create or replace function public.check_fencing_token(p_key text, p_token bigint) returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  v_lock public.distributed_locks;
  v_now timestamptz;
  v_idle_ms bigint;
  v_current_ms bigint;
begin
  select * into v_lock from public.distributed_locks where key = p_key and token = p_token for key share;
  v_now := clock_timestamp();
  if not found or v_lock.expires_at <= v_now then
    raise exception 'fencing token % is not the current holder''s token for %', p_token, p_key
      using errcode = 'AR422';
  end if;
  v_idle_ms := greatest(1, ceil(extract(epoch from (v_lock.expires_at - v_now)
                                                  + (v_lock.expires_at - v_lock.renewed_at)) * 1000))::bigint;
  select s.setting::bigint into v_current_ms from pg_catalog.pg_settings s
  where s.name = 'idle_in_transaction_session_timeout';
  if coalesce(v_current_ms, 0) = 0 or v_current_ms > v_idle_ms then
    perform pg_catalog.set_config('idle_in_transaction_session_timeout', v_idle_ms::text, true);
  end if;
  return true;
end
$$;

revoke all on function public.acquire_lock(text, text, uuid, bigint, jsonb, bigint) from public, anon, authenticated;
revoke all on function public.renew_lock(text, text, uuid, bigint) from public, anon, authenticated;
revoke all on function public.release_lock(text, text, uuid) from public, anon, authenticated;
revoke all on function public.check_fencing_token(text, bigint) from public, anon, authenticated;
grant execute on function public.acquire_lock(text, text, uuid, bigint, jsonb, bigint) to authenticated, service_role;
grant execute on function public.renew_lock(text, text, uuid, bigint) to authenticated, service_role;
grant execute on function public.release_lock(text, text, uuid) to authenticated, service_role;
grant execute on function public.check_fencing_token(text, bigint) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Queues: visibility from the clock at the moment of the decision
-- ---------------------------------------------------------------------------------------------

-- Queue and inbox: claims up to p_limit visible messages in seq order for p_visibility_ms.
-- A claimed message whose visibility timed out is claimable again; one that has used up its
-- attempts goes to the dead letters instead. SKIP LOCKED: concurrent consumers never get the same
-- message and never wait on each other. Visibility and expiry are compared with, and the new
-- visibility computed from, clock_timestamp() (see 20261201000200_messages_in_wakeups.sql).
-- p_ack_ids (optional): acknowledge these first, in the same transaction (of this channel only).
create or replace function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
                                                 p_visibility_ms bigint default null, p_ack_ids bigint[] default null)
returns json
language plpgsql security definer set search_path = '' as $$
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
  update public.distributed_messages set state = 'dead', last_error = coalesce(last_error, 'visibility timeout'),
                                         claimed_by = null
  where channel_id = v_channel.id and state = 'inflight' and visible_at <= clock_timestamp()
    and attempts >= v_channel.max_attempts;

  with picked as (
    select id from public.distributed_messages
    where channel_id = v_channel.id and state in ('ready', 'inflight') and visible_at <= clock_timestamp()
      and (expires_at is null or expires_at > clock_timestamp())
    order by seq
    limit p_limit
    for update skip locked
  ), claimed as (
    update public.distributed_messages m set state = 'inflight', attempts = m.attempts + 1,
                                             claimed_by = p_agent_id, visible_at = clock_timestamp() + v_visibility
    from picked where m.id = picked.id
    returning m as msg, m.seq as seq, m.attempts as attempts
  )
  select json_agg(agent_runtime_private.message_row(c.msg, v_channel.name, c.attempts) order by c.seq)
  into v_result from claimed c;
  return coalesce(v_result, '[]'::json);
end
$$;

-- Negative acknowledgement (as before; the retry time is computed from clock_timestamp(), after
-- the message row lock is taken): the message is redelivered after p_delay_ms, or goes to the dead
-- letters once it has used the channel's max attempts (or at once with p_dead => true). Returns
-- {state: 'retry'|'dead'|'ignored', attempts, retry_at}. p_release => true hands back a
-- queue/inbox message that was claimed but never handed to a handler (not an attempt).
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
  v_now := clock_timestamp();
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
  v_now := clock_timestamp();  -- (after the subscription row lock)
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

-- Extends the visibility of messages this agent holds (a long handler keeps its claim), from the
-- clock read once the rows are locked.
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
  update public.distributed_messages set visible_at = clock_timestamp() + v_visibility
  where id = any (v_ids) and state = 'inflight' and claimed_by = p_agent_id;
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

revoke all on function public.claim_messages(text, text, integer, bigint, bigint[]) from public, anon, authenticated;
revoke all on function public.nack_message(text, bigint, bigint, text, boolean, boolean) from public, anon, authenticated;
revoke all on function public.extend_visibility(text, bigint[], bigint) from public, anon, authenticated;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[]) to authenticated, service_role;
grant execute on function public.nack_message(text, bigint, bigint, text, boolean, boolean) to authenticated, service_role;
grant execute on function public.extend_visibility(text, bigint[], bigint) to authenticated, service_role;

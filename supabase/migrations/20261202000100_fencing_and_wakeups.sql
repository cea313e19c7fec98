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
--   time plus a third of its TTL (one renewal interval) has passed without a statement, so its
--   locks are released and its write is not committed.

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
-- The rest of the transaction may sit idle (between two statements) for at most the lease's
-- remaining time at the check plus a third of its TTL (one renewal interval); then the server
-- ends the session (idle_in_transaction_session_timeout, set for this transaction only, never
-- raised above a smaller value already in force): a holder paused or wedged inside its fencing
-- transaction cannot keep its successor waiting for long.
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
                                                  + (v_lock.expires_at - v_lock.renewed_at) / 3) * 1000))::bigint;
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
  select agent_runtime_private.messages_json(array_agg(c.msg order by c.seq), v_channel.name,
                                             array_agg(c.attempts order by c.seq))
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

-- ---------------------------------------------------------------------------------------------
-- Wake-ups that cannot lie
-- ---------------------------------------------------------------------------------------------
-- A wake-up is a hint: it may make an agent look sooner, never deliver a message that is not in
-- the table, nor move a cursor. Any database login can send a notification on any channel (plain
-- NOTIFY cannot be revoked), so a broadcast wake-up that carries its messages now carries them as
-- one JSON text ('m') with 'h', an HMAC-SHA256 of "<topic>\n<channel>\n<first seq>\n<m>" keyed by
-- a secret only the schema's owner can read. A trusted runtime gets the key (wakeup_key()) and
-- delivers carried messages only when the HMAC verifies; anyone else (an agent with its own JWT)
-- ignores them and fetches. HMAC from the core sha256() (pgcrypto is not everywhere; the result is
-- the standard HMAC-SHA256, which the runtime checks with Python's hmac module).
-- Acks name the channel they are for (ack_messages(p_channel)); fetch and claim ack only messages
-- of their own channel, so an id learnt from a forged wake-up cannot move another channel's cursor.

create table agent_runtime_private.wakeup_secret (
  id        boolean primary key default true check (id),  -- one row
  secret    bytea not null check (octet_length(secret) = 32),
  inner_pad bytea not null check (octet_length(inner_pad) = 64),  -- (secret, zero-padded) xor 0x36
  outer_pad bytea not null check (octet_length(outer_pad) = 64)   -- (secret, zero-padded) xor 0x5c
);
revoke all on table agent_runtime_private.wakeup_secret from public, anon, authenticated, service_role;

do $$
declare
  -- 3 x 122 random bits (gen_random_uuid draws from the server's strong random source).
  v_secret bytea := pg_catalog.sha256(pg_catalog.uuid_send(gen_random_uuid()) || pg_catalog.uuid_send(gen_random_uuid())
                                      || pg_catalog.uuid_send(gen_random_uuid()));
  v_key bytea := v_secret || pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex');
  v_inner bytea := v_key;
  v_outer bytea := v_key;
begin
  for i in 0..63 loop
    v_inner := pg_catalog.set_byte(v_inner, i, pg_catalog.get_byte(v_key, i) # 54);
    v_outer := pg_catalog.set_byte(v_outer, i, pg_catalog.get_byte(v_key, i) # 92);
  end loop;
  insert into agent_runtime_private.wakeup_secret (secret, inner_pad, outer_pad) values (v_secret, v_inner, v_outer);
end
$$;

-- HMAC-SHA256 of p_text (UTF-8) with the wake-up secret, hex.
create function agent_runtime_private.wakeup_mac(p_text text) returns text
language sql stable set search_path = '' as $$
  select pg_catalog.encode(pg_catalog.sha256(s.outer_pad || pg_catalog.sha256(s.inner_pad || pg_catalog.convert_to(p_text, 'UTF8'))), 'hex')
  from agent_runtime_private.wakeup_secret s
$$;
revoke all on function agent_runtime_private.wakeup_mac(text) from public, anon, authenticated, service_role;

-- The wake-up key (hex) for a trusted runtime: the service role, the owner, or a direct login the
-- operator granted it to (grant execute on function public.wakeup_key() to <role>). Agents with
-- their own JWT do not get it: they fetch instead of trusting what a wake-up carries.
-- (jsonb, a JSON string: the same answer over asyncpg and PostgREST)
create function public.wakeup_key() returns jsonb
language plpgsql stable security definer set search_path = '' as $$
begin
  if not agent_runtime_private.is_trusted() then
    raise exception 'only trusted roles may verify wake-ups' using errcode = 'AR403';
  end if;
  return (select pg_catalog.to_jsonb(pg_catalog.encode(s.secret, 'hex')) from agent_runtime_private.wakeup_secret s);
end
$$;
revoke all on function public.wakeup_key() from public, anon, authenticated;
grant execute on function public.wakeup_key() to service_role;

-- New messages: one wake-up per statement and channel, delivered after commit. On a broadcast
-- channel it carries the messages themselves when they are few, small and visible now: 'f' (the
-- first seq), 'm' (the messages exactly as fetch_messages returns them, attempts 1, as one JSON
-- text) and 'h' (its HMAC, see above); otherwise, and on queues and inboxes, it is the bare hint
-- {c, s}.
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
           bool_and(n.visible_at <= clock_timestamp()) as visible, sum(n.size_bytes) as payload_bytes
    from new_rows n join public.communication_channels c on c.id = n.channel_id
    group by c.id, c.name, c.kind
  loop
    v_topic := case when r.kind = 'direct' then r.name else 'channel:' || r.name end;
    v_note := null;
    if r.kind = 'broadcast' and r.visible and r.n <= 16 and r.seq - r.first_seq + 1 = r.n
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

drop function public.ack_messages(text, bigint[]);

-- Acknowledges messages this agent received. Queue/inbox: only the current claimant's ack counts
-- (a stale ack after the message was handed to someone else is ignored). Broadcast: the ack is
-- cumulative, it moves the subscriber's cursor to the highest acked seq of that channel, and it
-- resolves replayed dead letters. Returns the number of messages acknowledged.
-- p_channel (new): only messages of that channel are acknowledged; ids of other channels are
-- ignored. The runtime always names it (fetch_messages and claim_messages too, for their acks).
-- Without it, as before, each id acks on its own channel.
create function public.ack_messages(p_agent_id text, p_message_ids bigint[], p_channel text default null)
returns integer
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
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
  -- looking the ids up)
  if exists (select 1 from public.distributed_messages m
             where m.id = any (p_message_ids) and coalesce(m.state, '') = 'inflight'
               and m.claimed_by = p_agent_id and (v_channel_id is null or m.channel_id = v_channel_id)) then
    update public.distributed_messages m set state = 'acked', acked_at = clock_timestamp(), claimed_by = p_agent_id
    from public.communication_channels c
    where m.id = any (p_message_ids) and c.id = m.channel_id and c.kind <> 'broadcast'
      and coalesce(m.state, '') = 'inflight' and m.claimed_by = p_agent_id
      and (v_channel_id is null or m.channel_id = v_channel_id);
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

-- Broadcast: the next messages after this subscriber's cursor, in seq order, replayed dead letters
-- first. Head-of-line retry: while a nacked message waits for its retry time nothing is returned.
-- p_ack_ids (optional): acknowledge these first, in the same transaction: of this channel only.
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

  if v_sub.retry_at is null or v_sub.retry_at <= clock_timestamp() then  -- (see claim_messages)
    select agent_runtime_private.messages_json(
             array_agg(m::public.distributed_messages order by m.seq), v_channel.name,
             array_agg(case when m.seq = v_sub.retry_seq then v_sub.retry_attempts + 1 else 1 end order by m.seq))
    into v_messages
    from (select * from public.distributed_messages
          where channel_id = v_channel.id and seq > v_sub.cursor_seq
            and (expires_at is null or expires_at > clock_timestamp())
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

-- Revoke what lets any login emit the runtime's wake-ups, where this migration may: pg_notify and
-- the plain-Postgres bootstrap's realtime.send are executable by PUBLIC; only their owner (or a
-- superuser) can change that, so elsewhere (Supabase: both belong to other roles) this is skipped.
-- The triggers run as the schema's owner and keep using both. Plain NOTIFY cannot be revoked at
-- all: to an untrusted login it means at worst a spurious wake-up, never a message (see above).
do $$
declare
  v_super boolean := coalesce((select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user), false);
  v_send regprocedure := to_regprocedure('realtime.send(jsonb,text,text,boolean)');
begin
  if v_super or pg_catalog.pg_has_role(current_user, (select p.proowner from pg_catalog.pg_proc p
                                                       where p.oid = 'pg_catalog.pg_notify(text,text)'::regprocedure),
                                       'USAGE') then
    revoke execute on function pg_catalog.pg_notify(text, text) from public;
    grant execute on function pg_catalog.pg_notify(text, text) to service_role;
  end if;
  if v_send is not null and (v_super or pg_catalog.pg_has_role(current_user, (select p.proowner from pg_catalog.pg_proc p
                                                                              where p.oid = v_send), 'USAGE')) then
    execute format('revoke execute on function %s from public, anon, authenticated', v_send);
    execute format('grant execute on function %s to service_role', v_send);
  end if;
end
$$;

revoke all on function public.ack_messages(text, bigint[], text) from public, anon, authenticated;
revoke all on function public.fetch_messages(text, text, integer, bigint[]) from public, anon, authenticated;
revoke all on function agent_runtime_private.on_messages_inserted() from public, anon, authenticated, service_role;
grant execute on function public.ack_messages(text, bigint[], text) to authenticated, service_role;
grant execute on function public.fetch_messages(text, text, integer, bigint[]) to authenticated, service_role;

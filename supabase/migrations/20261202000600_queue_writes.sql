-- Queue writes (issue 13): claims and acks write as little as a queue must.
-- * distributed_messages gets a stored generated column, outcome (null while a message is open,
--   then 'acked' or 'dead'), and the claim and dead-letter indexes select on it instead of on
--   state: a claim (ready -> inflight), a nack or hand-back and a visibility extension change no
--   indexed column any more, so they are HOT updates that write no index entries (the claim index
--   named state, so every claim wrote a new entry in every index of the table).
-- * fillfactor 50 leaves room on each page for the claim's new row versions (a HOT update must stay
--   on its page, and a batch claims the rows of whole pages at once); it applies to pages written
--   from now on. Broadcast rows, never updated, take up to twice the pages they did.
-- * claim_messages keeps a generic plan (no planning per call, as ack_messages and fetch_messages).
-- * ack_messages with a channel runs only what that channel's kind needs: a queue ack is one UPDATE
--   (no look-up of the same rows first, no broadcast cursor or dead-letter work), a broadcast ack
--   no claim update; claim_messages writes the acks riding on it through the same private
--   ack_claims, without calling ack_messages (a second check of the caller and look-up of the channel).
-- * messages_json is PL/pgSQL: as a SQL function that is not inlined it planned its query again
--   on every call (a sixth of the server time of a claim of one message).
-- * list_channels and list_dead_letters select on outcome, so they keep using those indexes.
-- * claim_messages sends spent timed-out claims to the dead letters in a second statement, run only
--   when its scan met some (a data-modifying CTE in the claim was prepared on every claim).
-- * caller_role is PL/pgSQL (supabase/schemas/00_private_and_trust.sql): as a SQL function with a
--   pinned search_path it was parsed and planned again on every call, i.e. in every API call.
-- * acquire_lock: the first waiter for a lease watches it every eighth of the time it has watched
--   so far, between 0.2 and 2 ms (it was every 2 ms): a short hold is handed over sooner.
-- Adding the stored column rewrites distributed_messages once (under an exclusive lock).

alter table public.distributed_messages
  add column outcome text generated always as (case when state in ('acked', 'dead') then state end) stored;
alter table public.distributed_messages set (fillfactor = 50);
drop index public.distributed_messages_claim_idx;
create index distributed_messages_claim_idx on public.distributed_messages (channel_id, seq)
  where outcome is null;
drop index public.distributed_messages_dead_idx;
create index distributed_messages_dead_idx on public.distributed_messages (channel_id, id)
  where outcome = 'dead';

-- caller_role() -> text: the caller's real role (see the top of this file): the SET ROLE value
-- when the session switched role, else the login role. Never null; raises nothing. PL/pgSQL: a SQL
-- function with a pinned search_path is not inlined, and was parsed and planned again on every
-- call (every API call makes one: a tenth of the server time of a queue claim of one message).
create or replace function agent_runtime_private.caller_role() returns text
language plpgsql stable set search_path = '' as $$
begin
  return case when current_setting('role') = 'none' then session_user::text else current_setting('role') end;
end
$$;
revoke all on function agent_runtime_private.caller_role() from public, anon, authenticated, service_role;

-- messages_json(p_messages, p_channel, p_attempts) -> json: messages as delivered (fetch, claim,
-- wake-ups, dead letters), in the arrays' order, p_attempts[i] the delivery attempt of
-- p_messages[i]; null for no messages. The one definition of a message's document (message_wire's
-- fields). It takes a batch, not one message, because a function with a pinned search_path is not
-- inlined: called once per message it cost the fetch path microseconds per message. PL/pgSQL, not
-- SQL: a SQL function that is not inlined plans its query again on every call (a claim of one
-- message spent a sixth of its server time there); PL/pgSQL keeps the plan for the session.
-- Raises: nothing of its own.
create or replace function agent_runtime_private.messages_json(p_messages public.distributed_messages[], p_channel text,
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

-- list_channels() -> jsonb: every channel the caller may read (an agent token: not other agents'
-- inboxes) with its settings, online subscribers, ready/in-flight and dead message counts.
-- Raises: nothing of its own.
create or replace function public.list_channels() returns jsonb
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

-- ack_claims(p_agent_id, p_message_ids, p_channel) -> integer: the queue/inbox half of
-- ack_messages, for a channel already looked up (claim_messages writes the acks riding on a claim
-- with it, without a second call, check and look-up). Acks this agent's claims of that channel,
-- and the replies in its own inbox it took from their (signed) wake-ups without claiming them
-- (never claimed, so no one else holds them). Its callers set the planner settings it relies on.
-- (coalesce: a plan cached when the table was small must not scan the claim index instead of
-- looking the ids up.)
-- Raises: nothing of its own.
create or replace function agent_runtime_private.ack_claims(p_agent_id text, p_message_ids bigint[],
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
create or replace function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
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
create or replace function public.ack_messages(p_agent_id text, p_message_ids bigint[], p_channel text default null)
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

-- Dead letters of queues/inboxes (state on the message) and of broadcast subscribers (one row per
-- subscriber), newest first.
-- Raises: AR400 invalid input; AR404 unknown agent; AR405 unknown channel or not subscribed.
create or replace function public.list_dead_letters(p_channel text default null, p_limit integer default 100)
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

-- Takes the lease on p_key if it is free or expired (or already held by this same lease, which
-- extends it). Every new holder gets a fresh fencing token from a global sequence, so tokens
-- strictly increase per key across owners. Returns {acquired, token, expires_at, owner_id, ttl_ms};
-- when not acquired, ttl_ms says how long the current holder's lease still runs.
-- Waiting (p_wait_ms > 0): waiters queue in the database, first come
-- first served (a transaction advisory lock per key, which Postgres grants in arrival order), and
-- the first in the queue watches the lease row (every eighth of the time it has watched so far,
-- between 0.2 and 2 ms: a short hold is handed over within a fraction of a millisecond, a long one
-- costs at most 500 looks a second), so it takes the lease within a few
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
  v_first timestamptz;
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

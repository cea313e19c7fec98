-- agent_runtime declared schema, part 40: leases with fencing tokens.
-- Owns: distributed_locks_token_seq, distributed_locks; lock_json; acquire_lock, renew_lock,
-- release_lock, check_fencing_token, list_locks. Every expiry is computed from (select agent_runtime_private.clock())
-- read after the row lock is taken (never now(), the transaction start, which can be long before).

-- Fencing tokens come from one sequence: strictly increasing per key across owners, and still so
-- after a lock row is cleaned up.
create sequence public.distributed_locks_token_seq;

create table public.distributed_locks (
  -- (Postgres regexes allow repetition counts up to 255 only, hence char_length.)
  key         text primary key check (char_length(key) between 1 and 256 and key !~ '[[:cntrl:]]'),
  owner_id    text not null references public.distributed_agents (id) on delete cascade,
  lease_id    uuid not null,
  token       bigint not null,
  acquired_at timestamptz not null default now(),
  renewed_at  timestamptz not null default now(),
  expires_at  timestamptz not null,
  metadata    jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object')
);
create index distributed_locks_expires_idx on public.distributed_locks (expires_at);
create index distributed_locks_owner_idx on public.distributed_locks (owner_id);

-- lock_json(l, p_acquired) -> jsonb: a lease as returned to its (would-be) holder; lease id and
-- token only when acquired. (PL/pgSQL: as a SQL function with a pinned search_path it is not
-- inlined, and its query was planned again on every call, a third of an acquire's server time.)
-- Raises: nothing of its own.
create function agent_runtime_private.lock_json(l public.distributed_locks, p_acquired boolean)
returns jsonb language plpgsql volatile set search_path = '' as $$
begin
  return jsonb_build_object('key', l.key, 'acquired', p_acquired, 'owner_id', l.owner_id,
                            'lease_id', case when p_acquired then l.lease_id end,
                            'token', case when p_acquired then l.token end,
                            'acquired_at', l.acquired_at, 'expires_at', l.expires_at,
                            'ttl_ms', greatest(0, (extract(epoch from l.expires_at - agent_runtime_private.clock()) * 1000)::bigint));
end
$$;
revoke all on function agent_runtime_private.lock_json(public.distributed_locks, boolean) from public, anon, authenticated, service_role;

-- Takes the lease on p_key if it is free or expired (or already held by this same lease, which
-- extends it). Every new holder gets a fresh fencing token from a global sequence, so tokens
-- strictly increase per key across owners. Returns {acquired, token, expires_at, owner_id, ttl_ms};
-- when not acquired, ttl_ms says how long the current holder's lease still runs.
-- Waiting (p_wait_ms > 0): waiters queue in the database, first come
-- first served (a transaction advisory lock per key, which Postgres grants in arrival order), and
-- the first in the queue watches the lease row (every eighth of the time it has watched so far,
-- between 0.2 and 2 ms asked; pg_sleep waits in whole milliseconds of its latch, so 1 to about
-- 3 ms in fact: a short hold is handed over within about a millisecond, a long one costs at most
-- 500 looks a second), so it takes the lease within a few
-- milliseconds of its release or expiry, with no poll or notification round trip, and the others
-- wait their turn instead of racing for it. The wait writes nothing (no commit flush). A caller
-- that finds nobody queued takes the queue lock at once (no subtransaction).
-- Raises: AR400 invalid input; AR401 invalid name; AR403 not allowed; AR404 unknown agent.
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

-- Extends a held lease. Raises AR409 if this lease does not hold the key (never held, released,
-- expired, or taken over): the holder must stop acting as owner.
-- Raises: AR400 invalid input; AR403 not allowed; AR409 lock not held.
create function public.renew_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint)
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

-- Releases a held lease; returns false if it was not held (already expired or taken over).
-- p_durable => false (how the runtime releases): when the release is the first write of its
-- transaction, that transaction commits without waiting for its WAL flush. A release lost that
-- way (the server crashes before the WAL writer flushes it) leaves the lease to run out at its
-- TTL, which is what a holder that died before releasing leaves too; the fencing tokens are
-- untouched (a release issues none), and any acquire that saw the release commits durably, which
-- flushes the WAL up to and past the release first (the WAL is flushed in order), so a lease once
-- taken over never comes back to the releaser. Writes of the same transaction after the release
-- share its commit (but a send or an acquire restores the durable commit first: see
-- agent_runtime.durable_commit in send_messages): a caller that wants them durable keeps the
-- default (p_durable => true).
-- The release announces the key on 'locks' (a hint for waiters sleeping between tries) only when
-- no acquire is queued for it in the database: a queued one (it holds the key's queue lock, see
-- acquire_lock) watches the row and takes the lease itself within a poll, and the hint would only
-- wake every listening connection and runtime for nothing.
-- Raises: AR403 not allowed.
create function public.release_lock(p_agent_id text, p_key text, p_lease_id uuid, p_durable boolean default true)
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

-- Fencing check for a protected write: raises AR422 unless p_token is the live holder's token.
-- Call it in the same transaction as the write it guards. The lock row is share-locked until that
-- transaction ends, so no one can take the lease over between the check and the write's commit
-- (a successor's acquire waits for it): writes never go back to an older token. Volatile, as it locks.
-- Raises: AR422 stale fencing token.
create function public.check_fencing_token(p_key text, p_token bigint) returns boolean
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

-- list_locks() -> jsonb: the live leases (key, owner, token, times, metadata) ordered by key.
-- Raises: nothing of its own.
create function public.list_locks() returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'key', key, 'owner_id', owner_id, 'token', token, 'acquired_at', acquired_at,
           'expires_at', expires_at, 'metadata', metadata) order by key), '[]'::jsonb)
  from public.distributed_locks where expires_at > (select agent_runtime_private.clock())
$$;
revoke all on function public.list_locks() from public, anon, authenticated;
grant execute on function public.list_locks() to authenticated, service_role;

-- Lock hand-over (issue 13): a release costs no WAL flush wait, and no wake-up when a waiter is
-- queued in the database for its key.
-- * release_lock(p_durable => false), as the runtime calls it: a release that is the first write
--   of its transaction commits with synchronous_commit off. A release lost in a crash only leaves
--   the lease to run out at its TTL, as a holder that died before releasing does; it issues no
--   fencing token; and the next acquire (durable, it issues the token) flushes the WAL up to and
--   past the release before it returns. The default (p_durable => true) is as before, for callers
--   that write more in the same transaction.
-- * release_lock sends the 'locks' hint itself, and only when no acquire waits in the database's
--   queue for the key (pg_try_advisory_xact_lock on the queue lock succeeds): the queued waiter
--   watches the row and takes the lease within a poll, and each hint woke every listening backend
--   of the database (a transaction each) and every runtime. The delete trigger leaves the release's
--   own row to it (agent_runtime.releasing_lock names the key meanwhile); other deletes (cleanup,
--   an agent deregistering) still announce every key.
-- The signature gains a parameter: the old function is dropped (its grants go with it).

drop function public.release_lock(text, text, uuid);

-- Releases a held lease; returns false if it was not held (already expired or taken over).
-- p_durable => false (how the runtime releases): when the release is the first write of its
-- transaction, that transaction commits without waiting for its WAL flush. A release lost that
-- way (the server crashes before the WAL writer flushes it) leaves the lease to run out at its
-- TTL, which is what a holder that died before releasing leaves too; the fencing tokens are
-- untouched (a release issues none), and any acquire that saw the release commits durably, which
-- flushes the WAL up to and past the release first (the WAL is flushed in order), so a lease once
-- taken over never comes back to the releaser. Writes of the same transaction after the release
-- share its commit: a caller that wants them durable keeps the default (p_durable => true).
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

-- on_lock_released() trigger: a deleted lease notifies 'locks' (waiters try again at once),
-- except the one release_lock is deleting: it sends that hint itself, only when no acquire is
-- queued in the database for the key (see release_lock). (Any session can set the setting; it
-- only drops the hints of its own transaction's deletes, which waiters' timers stand in for.)
-- Raises: nothing of its own.
create or replace function agent_runtime_private.on_lock_released() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  if pg_catalog.current_setting('agent_runtime.releasing_lock', true) is distinct from old.key then
    perform agent_runtime_private.notify('locks', 'released', jsonb_build_object('k', old.key));
  end if;
  return null;
end
$$;
revoke all on function agent_runtime_private.on_lock_released() from public, anon, authenticated, service_role;

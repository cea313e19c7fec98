-- agent_runtime declared schema, part 60: cleanup (the janitor calls these; each is safe to run
-- concurrently and bounded per call).
-- Owns: cleanup_expired_messages, cleanup_expired_locks, cleanup_stale_presence,
-- cleanup_old_metrics, run_cleanup.

-- cleanup_expired_messages(p_limit) -> integer: deletes up to p_limit messages past their TTL or
-- their channel's retention, and acked ones after min(retention, 1 hour); returns the count.
-- Maintenance: trusted callers only.
-- Raises: AR403 not allowed.
create function public.cleanup_expired_messages(p_limit integer default 10000) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_expired_messages');
  delete from public.distributed_messages where id in (
    select m.id from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id
    where (m.expires_at <= (select agent_runtime_private.clock()) and m.state <> 'dead')
       or m.created_at < (select agent_runtime_private.clock()) - c.retention
       or (m.state = 'acked' and m.acked_at < (select agent_runtime_private.clock()) - least(c.retention, interval '1 hour'))
    limit p_limit
    for update of m skip locked);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.cleanup_expired_messages(integer) from public, anon, authenticated;
grant execute on function public.cleanup_expired_messages(integer) to service_role;

-- cleanup_expired_locks() -> integer: deletes expired leases; returns the count. Trusted callers only.
-- Raises: AR403 not allowed.
create function public.cleanup_expired_locks() returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_expired_locks');
  delete from public.distributed_locks where expires_at <= (select agent_runtime_private.clock());
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.cleanup_expired_locks() from public, anon, authenticated;
grant execute on function public.cleanup_expired_locks() to service_role;

-- cleanup_stale_presence() -> integer: marks agents whose heartbeat lapsed offline (which emits
-- their leave event); returns the count. Trusted callers only.
-- Marks agents whose heartbeat lapsed as offline, which emits their leave event.
-- Raises: AR403 not allowed.
create function public.cleanup_stale_presence() returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_stale_presence');
  update public.agent_presence set status = 'offline', changed_at = (select agent_runtime_private.clock())
  where status <> 'offline' and expires_at <= (select agent_runtime_private.clock());
  get diagnostics v_n = row_count;
  update public.distributed_agents a set status = 'offline'
  from public.agent_presence p where p.agent_id = a.id and p.status = 'offline' and a.status <> 'offline';
  return v_n;
end
$$;
revoke all on function public.cleanup_stale_presence() from public, anon, authenticated;
grant execute on function public.cleanup_stale_presence() to service_role;

-- cleanup_old_metrics(p_older_than_ms) -> integer: deletes metric buckets older than that (at least
-- a minute); returns the count. Trusted callers only.
-- Raises: AR400 invalid input; AR403 not allowed.
create function public.cleanup_old_metrics(p_older_than_ms bigint default 604800000) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_old_metrics');
  delete from public.communication_metrics
  where bucket < (select agent_runtime_private.clock()) - agent_runtime_private.ms(p_older_than_ms, 'metrics retention', 60000, 315360000000);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.cleanup_old_metrics(bigint) from public, anon, authenticated;
grant execute on function public.cleanup_old_metrics(bigint) to service_role;

-- run_cleanup(p_metrics_retention_ms) -> jsonb: every cleanup above, with their counts. Trusted
-- callers only (the janitor of a trusted agent).
-- Raises: AR400 invalid input; AR403 not allowed.
create function public.run_cleanup(p_metrics_retention_ms bigint default 604800000) returns jsonb
language sql security definer set search_path = '' as $$
  select jsonb_build_object(
    'stale_presence', public.cleanup_stale_presence(),
    'expired_locks', public.cleanup_expired_locks(),
    'expired_messages', public.cleanup_expired_messages(),
    'old_metrics', public.cleanup_old_metrics(p_metrics_retention_ms))
$$;
revoke all on function public.run_cleanup(bigint) from public, anon, authenticated;
grant execute on function public.run_cleanup(bigint) to service_role;

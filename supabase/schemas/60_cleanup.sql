-- agent_runtime declared schema, part 60: cleanup (the janitor calls these; each is safe to run
-- concurrently and bounded per call).
-- Owns: cleanup_expired_messages, cleanup_expired_locks, cleanup_stale_presence,
-- cleanup_old_metrics, run_cleanup.

create function public.cleanup_expired_messages(p_limit integer default 10000) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  delete from distributed_messages where id in (
    select m.id from distributed_messages m join communication_channels c on c.id = m.channel_id
    where (m.expires_at <= now() and m.state <> 'dead')
       or m.created_at < now() - c.retention
       or (m.state = 'acked' and m.acked_at < now() - least(c.retention, interval '1 hour'))
    limit p_limit
    for update of m skip locked);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

create function public.cleanup_expired_locks() returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  delete from distributed_locks where expires_at <= now();
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

-- Marks agents whose heartbeat lapsed as offline, which emits their leave event.
create function public.cleanup_stale_presence() returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  update agent_presence set status = 'offline', changed_at = now()
  where status <> 'offline' and expires_at <= now();
  get diagnostics v_n = row_count;
  update distributed_agents a set status = 'offline'
  from agent_presence p where p.agent_id = a.id and p.status = 'offline' and a.status <> 'offline';
  return v_n;
end
$$;

create function public.cleanup_old_metrics(p_older_than_ms bigint default 604800000) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_n integer;
begin
  delete from communication_metrics
  where bucket < now() - agent_runtime_private.ms(p_older_than_ms, 'metrics retention', 60000, 315360000000);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

create function public.run_cleanup(p_metrics_retention_ms bigint default 604800000) returns jsonb
language sql security definer set search_path = public, pg_temp as $$
  select jsonb_build_object(
    'stale_presence', public.cleanup_stale_presence(),
    'expired_locks', public.cleanup_expired_locks(),
    'expired_messages', public.cleanup_expired_messages(),
    'old_metrics', public.cleanup_old_metrics(p_metrics_retention_ms))
$$;

-- agent_runtime declared schema, part 50: metrics, aggregated per agent x channel x metric x minute.
-- Owns: communication_metrics; record_communication_metrics, get_communication_metrics.

create table public.communication_metrics (
  agent_id text not null references public.distributed_agents (id) on delete cascade,
  channel  text not null default '',
  metric   text not null check (metric ~ '^[a-z][a-z0-9_.]{0,127}$'),
  bucket   timestamptz not null,
  count    bigint not null default 0,
  sum      double precision not null default 0,
  min      double precision,
  max      double precision,
  primary key (agent_id, channel, metric, bucket)
);
create index communication_metrics_bucket_idx on public.communication_metrics (bucket);

-- Records a batch of aggregated figures into one-minute buckets (by the database clock):
-- p_metrics is a JSON array of {metric, channel?, count, sum, min?, max?}. Returns rows written.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent.
create function public.record_communication_metrics(p_agent_id text, p_metrics jsonb) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  perform agent_runtime_private.agent_exists(p_agent_id);
  if p_metrics is null or jsonb_typeof(p_metrics) <> 'array' or jsonb_array_length(p_metrics) > 10000 then
    raise exception 'metrics must be a JSON array of at most 10000 entries' using errcode = 'AR400';
  end if;
  begin
    insert into public.communication_metrics as cm (agent_id, channel, metric, bucket, count, sum, min, max)
    select p_agent_id, coalesce(e ->> 'channel', ''), e ->> 'metric',
           date_bin(interval '1 minute', (select agent_runtime_private.clock()), timestamptz '2000-01-01'),
           sum(coalesce((e ->> 'count')::bigint, 1)), sum(coalesce((e ->> 'sum')::double precision, 0)),
           min((e ->> 'min')::double precision), max((e ->> 'max')::double precision)
    from jsonb_array_elements(p_metrics) e
    group by 1, 2, 3, 4
    on conflict (agent_id, channel, metric, bucket) do update set
      count = cm.count + excluded.count, sum = cm.sum + excluded.sum,
      min = least(cm.min, excluded.min), max = greatest(cm.max, excluded.max);
    get diagnostics v_n = row_count;
  exception
    when not_null_violation or check_violation or invalid_text_representation
         or numeric_value_out_of_range or wrong_object_type then
      raise exception 'malformed metric: %', sqlerrm using errcode = 'AR400',
        hint = 'each entry needs a metric name (lowercase, digits, _ .) and numeric count/sum/min/max';
  end;
  return v_n;
end
$$;
revoke all on function public.record_communication_metrics(text, jsonb) from public, anon, authenticated;
grant execute on function public.record_communication_metrics(text, jsonb) to authenticated, service_role;

-- Reads metrics back, summed over buckets since p_since_ms ago.
-- Raises: nothing of its own.
create function public.get_communication_metrics(p_agent_id text default null, p_metric text default null,
                                                 p_since_ms bigint default 3600000)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'agent_id', agent_id, 'channel', channel, 'metric', metric, 'count', count, 'sum', sum,
           'min', min, 'max', max, 'mean', case when count > 0 then sum / count end,
           'first_bucket', first_bucket, 'last_bucket', last_bucket)
         order by agent_id, channel, metric), '[]'::jsonb)
  from (
    select agent_id, channel, metric, sum(count)::bigint as count, sum(sum) as sum, min(min) as min,
           max(max) as max, min(bucket) as first_bucket, max(bucket) as last_bucket
    from public.communication_metrics
    where (p_agent_id is null or agent_id = p_agent_id) and (p_metric is null or metric = p_metric)
      -- What RLS lets the caller read: an agent token reads its own figures only.
      and ((select agent_runtime_private.is_trusted()) or agent_id = (select agent_runtime_private.jwt_agent_id()))
      and bucket >= date_bin(interval '1 minute',
                             (select agent_runtime_private.clock()) - coalesce(p_since_ms, 3600000) * interval '1 millisecond',
                             timestamptz '2000-01-01')
    group by agent_id, channel, metric
  ) s
$$;
revoke all on function public.get_communication_metrics(text, text, bigint) from public, anon, authenticated;
grant execute on function public.get_communication_metrics(text, text, bigint) to authenticated, service_role;

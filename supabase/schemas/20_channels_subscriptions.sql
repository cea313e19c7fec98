-- agent_runtime declared schema, part 20: channels and durable subscriptions.
-- Owns: communication_channels, channel_subscriptions; channel, channel_json; ensure_channel,
-- subscribe_channel, unsubscribe_channel.

create table public.communication_channels (
  id                  bigint generated always as identity primary key,
  name                text not null unique
                      check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
  kind                text not null check (kind in ('broadcast', 'queue', 'direct')),
  owner_id            text references public.distributed_agents (id) on delete cascade,
  retention           interval not null default interval '1 day'
                      check (retention > interval '0'),
  message_ttl         interval check (message_ttl is null or message_ttl > interval '0'),
  max_attempts        integer not null default 5 check (max_attempts between 1 and 1000),
  visibility_timeout  interval not null default interval '30 seconds'
                      check (visibility_timeout between interval '100 milliseconds' and interval '12 hours'),
  max_payload_bytes   integer not null default 262144 check (max_payload_bytes between 1 and 1048576),
  metadata            jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  -- Per-channel sequence. Producers take this row's lock to number their messages, so seq order
  -- is commit order and a cursor can never skip a producer that commits late.
  last_seq            bigint not null default 0,
  created_by          text,
  created_at          timestamptz not null default now(),
  check ((kind = 'direct') = (owner_id is not null))
);

-- The foreign key's index (deleting an agent finds its inbox; the inbox look-up by owner).
create index communication_channels_owner_idx on public.communication_channels (owner_id);

create table public.channel_subscriptions (
  channel_id     bigint not null references public.communication_channels (id) on delete cascade,
  agent_id       text not null references public.distributed_agents (id) on delete cascade,
  -- Broadcast: every seq <= cursor_seq is acknowledged by this subscriber (cumulative ack).
  cursor_seq     bigint not null default 0,
  -- Broadcast redelivery is head-of-line: a nacked seq is retried before anything after it.
  retry_seq      bigint,
  retry_attempts integer not null default 0,
  retry_at       timestamptz,
  subscribed_at  timestamptz not null default now(),
  updated_at     timestamptz not null default now(),
  primary key (channel_id, agent_id)
);
create index channel_subscriptions_agent_idx on public.channel_subscriptions (agent_id);

-- channel(p_name) -> communication_channels: the channel's row.
-- Raises: AR404 unknown agent; AR405 unknown channel or not subscribed.
create function agent_runtime_private.channel(p_name text)
returns public.communication_channels language plpgsql stable set search_path = '' as $$
declare
  v public.communication_channels;
begin
  select * into v from public.communication_channels where name = p_name;
  if not found then
    if p_name ~ '^agent:' then
      raise exception 'unknown agent %', substr(p_name, 7) using errcode = 'AR404';
    end if;
    raise exception 'unknown channel %', p_name using errcode = 'AR405',
      hint = 'create it with ensure_channel';
  end if;
  return v;
end
$$;
revoke all on function agent_runtime_private.channel(text) from public, anon, authenticated, service_role;

-- channel_json(c) -> jsonb: a channel's settings as a document (durations in ms).
-- Raises: nothing of its own.
create function agent_runtime_private.channel_json(c public.communication_channels) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object(
    'id', c.id, 'name', c.name, 'kind', c.kind, 'owner_id', c.owner_id,
    'retention_ms', (extract(epoch from c.retention) * 1000)::bigint,
    'message_ttl_ms', (extract(epoch from c.message_ttl) * 1000)::bigint,
    'max_attempts', c.max_attempts,
    'visibility_timeout_ms', (extract(epoch from c.visibility_timeout) * 1000)::bigint,
    'max_payload_bytes', c.max_payload_bytes, 'metadata', c.metadata,
    'last_seq', c.last_seq, 'created_by', c.created_by, 'created_at', c.created_at)
$$;
revoke all on function agent_runtime_private.channel_json(public.communication_channels) from public, anon, authenticated, service_role;

-- Creates the channel if it does not exist; an existing channel keeps its settings, but asking
-- for a different kind is an error (AR412).
-- Raises: AR400 invalid input; AR401 invalid name; AR403 not allowed; AR412 channel kind mismatch.
create function public.ensure_channel(
  p_agent_id text, p_name text, p_kind text default 'broadcast',
  p_retention_ms bigint default null, p_message_ttl_ms bigint default null,
  p_max_attempts integer default null, p_visibility_timeout_ms bigint default null,
  p_max_payload_bytes integer default null, p_metadata jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v public.communication_channels;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$' then
    raise exception 'invalid channel name %', coalesce(p_name, '<null>') using errcode = 'AR401',
      hint = '1-128 characters: letters, digits, _ . : / - (not starting with a symbol)';
  end if;
  if p_name ~ '^agent:' then
    raise exception 'channel names starting with agent: are agent inboxes' using errcode = 'AR401';
  end if;
  if p_kind is null or p_kind not in ('broadcast', 'queue') then
    raise exception 'invalid channel kind % (broadcast or queue)', coalesce(p_kind, '<null>')
      using errcode = 'AR400';
  end if;
  select * into v from public.communication_channels where name = p_name;
  if found then
    if v.kind <> p_kind then
      raise exception 'channel % is a % channel, not %', p_name, v.kind, p_kind using errcode = 'AR412';
    end if;
    return agent_runtime_private.channel_json(v);
  end if;
  insert into public.communication_channels as c (name, kind, retention, message_ttl, max_attempts,
                                           visibility_timeout, max_payload_bytes, metadata, created_by)
  values (
    p_name, p_kind,
    coalesce(agent_runtime_private.ms(p_retention_ms, 'retention', 1000, 315360000000), interval '1 day'),
    case when p_message_ttl_ms is null then null
         else agent_runtime_private.ms(p_message_ttl_ms, 'message ttl', 1, 315360000000) end,
    coalesce(p_max_attempts, 5),
    coalesce(agent_runtime_private.ms(p_visibility_timeout_ms, 'visibility timeout', 100, 43200000),
             interval '30 seconds'),
    coalesce(p_max_payload_bytes, 262144),
    coalesce(p_metadata, '{}'::jsonb),
    p_agent_id)
  on conflict (name) do update set name = excluded.name  -- lost a creation race: return the winner
  returning * into v;
  if v.kind <> p_kind then
    raise exception 'channel % is a % channel, not %', p_name, v.kind, p_kind using errcode = 'AR412';
  end if;
  return agent_runtime_private.channel_json(v);
exception
  when check_violation then
    raise exception 'invalid channel settings: %', sqlerrm using errcode = 'AR400';
end
$$;
revoke all on function public.ensure_channel(text, text, text, bigint, bigint, integer, bigint, integer, jsonb) from public, anon, authenticated;
grant execute on function public.ensure_channel(text, text, text, bigint, bigint, integer, bigint, integer, jsonb) to authenticated, service_role;

-- Durable subscription: subscribing again keeps the cursor. p_from applies to a new broadcast
-- subscription only: 'latest' starts after the current last message, 'earliest' replays what is
-- retained.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed.
create function public.subscribe_channel(p_agent_id text, p_channel text, p_from text default 'latest')
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_channel public.communication_channels;
  v_sub public.channel_subscriptions;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  perform agent_runtime_private.agent_exists(p_agent_id);
  if p_from is null or p_from not in ('latest', 'earliest') then
    raise exception 'p_from must be latest or earliest' using errcode = 'AR400';
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  if v_channel.kind = 'direct' and v_channel.owner_id <> p_agent_id then
    raise exception 'only agent % may consume its inbox', v_channel.owner_id using errcode = 'AR403';
  end if;
  insert into public.channel_subscriptions (channel_id, agent_id, cursor_seq)
  values (v_channel.id, p_agent_id, case when p_from = 'latest' then v_channel.last_seq else 0 end)
  on conflict (channel_id, agent_id) do update set updated_at = (select agent_runtime_private.clock())
  returning * into v_sub;
  return jsonb_build_object('channel', v_channel.name, 'kind', v_channel.kind,
                            'agent_id', p_agent_id, 'cursor', v_sub.cursor_seq,
                            'last_seq', v_channel.last_seq,
                            'visibility_timeout_ms', (extract(epoch from v_channel.visibility_timeout) * 1000)::bigint,
                            'max_attempts', v_channel.max_attempts);
end
$$;
revoke all on function public.subscribe_channel(text, text, text) from public, anon, authenticated;
grant execute on function public.subscribe_channel(text, text, text) to authenticated, service_role;

-- unsubscribe_channel(p_agent_id, p_channel) -> boolean: drops the subscription (and its cursor);
-- false if there was none.
-- Raises: AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed.
create function public.unsubscribe_channel(p_agent_id text, p_channel text) returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  v_channel public.communication_channels;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  v_channel := agent_runtime_private.channel(p_channel);
  delete from public.channel_subscriptions where channel_id = v_channel.id and agent_id = p_agent_id;
  return found;
end
$$;
revoke all on function public.unsubscribe_channel(text, text) from public, anon, authenticated;
grant execute on function public.unsubscribe_channel(text, text) to authenticated, service_role;

-- Hygiene and least privilege (supabase/schemas/ shows the result in place).
--
-- * Trust is decided by the caller's real role (SET ROLE value, else the login role), never by
--   the JWT's 'role' claim a session can set: agent_runtime_private.caller_role(); the claims only
--   name the agent of an 'authenticated' caller.
-- * Every function has `set search_path = ''` with fully qualified names, and explicit revokes
--   before its grants. agent_runtime_private (schema and functions) is for its owner only; the
--   policies read the agent id with auth.jwt() instead of a private helper.
-- * Maintenance (cleanup_*, run_cleanup) is for trusted callers only (granted to service_role,
--   and checked inside: AR403).
-- * Listing functions return only what RLS lets the caller read: list_channels hides other agents'
--   inboxes and counts online subscribers only; list_dead_letters shows an agent token the dead
--   letters of its inbox, of the channels it subscribes to, and its own broadcast dead letters;
--   get_communication_metrics an agent token's own figures.
-- * Tables and sequences: revoke all from public, anon and authenticated before the intended
--   grants (SELECT for authenticated), so default privileges (Supabase grants anon and
--   authenticated everything, TRUNCATE and setval included) change nothing.
-- * An index for the one unindexed foreign key, communication_channels.owner_id.
-- * Agents' documents from one view, agent_runtime_private.agent_documents, instead of
--   agent_row/agent_json (functions with a pinned search_path are not inlined: calling them per
--   agent made list_agents and the topology several times slower), and messages' documents from
--   messages_json, one call per batch, instead of message_row, one call per message.

revoke all on schema agent_runtime_private from public, anon, authenticated, service_role;

create index communication_channels_owner_idx on public.communication_channels (owner_id);

-- Agents' documents come from one view (inlined by the planner) instead of agent_row/agent_json,
-- which a pinned search_path would keep from being inlined (dropped below).
-- agent_documents: every agent with its presence (an agent without a presence row is offline) and
-- its document, one topology_agent row whose status and online are computed from the expiry by the
-- database clock. The one definition of what an agent looks like: the registry functions,
-- list_agents and the topology all read it. A view rather than a function: the planner inlines it
-- into each query (it would not inline a function with a pinned search_path, and calling one per
-- agent made listing 10,000 agents several times slower), and a view's names are resolved once,
-- when it is created.
create view agent_runtime_private.agent_documents as
  select a.id, a.capabilities, p.status as presence_status, p.expires_at as presence_expires_at,
         row(a.id, a.name, a.kind, a.capabilities, a.version, a.host, a.pid, a.metadata,
             case when p.expires_at is null or p.expires_at <= now() then 'offline' else p.status end,
             coalesce(p.load, 0), coalesce(p.status <> 'offline' and p.expires_at > now(), false),
             a.started_at, a.last_seen, p.heartbeat_at, p.expires_at, a.incarnation
         )::agent_runtime_private.topology_agent as doc
  from public.distributed_agents a left join public.agent_presence p on p.agent_id = a.id;
revoke all on table agent_runtime_private.agent_documents from public, anon, authenticated, service_role;

-- caller_role() -> text: the caller's real role (see the top of this file): the SET ROLE value
-- when the session switched role, else the login role. Never null; raises nothing.
create or replace function agent_runtime_private.caller_role() returns text
language sql stable set search_path = '' as $$
  select case when current_setting('role') = 'none' then session_user::text else current_setting('role') end
$$;
revoke all on function agent_runtime_private.caller_role() from public, anon, authenticated, service_role;

-- is_trusted() -> boolean: true unless the caller's real role is anon, authenticated or
-- authenticator. Raises nothing.
create or replace function agent_runtime_private.is_trusted() returns boolean
language sql stable set search_path = '' as $$
  select agent_runtime_private.caller_role() not in ('anon', 'authenticated', 'authenticator')
$$;
revoke all on function agent_runtime_private.is_trusted() from public, anon, authenticated, service_role;

-- assert_trusted(p_what text) -> void: returns when the caller is trusted (maintenance functions).
-- Raises AR403 naming p_what otherwise.
create or replace function agent_runtime_private.assert_trusted(p_what text) returns void
language plpgsql stable set search_path = '' as $$
begin
  if not agent_runtime_private.is_trusted() then
    raise exception '% is for trusted callers (the service role or a direct login)', p_what
      using errcode = 'AR403', hint = 'agent tokens cannot run maintenance';
  end if;
end
$$;
revoke all on function agent_runtime_private.assert_trusted(text) from public, anon, authenticated, service_role;

-- jwt_agent_id() -> text: the 'agent_id' claim of the request's JWT (request.jwt.claims), or null.
-- Meaningful only for an 'authenticated' caller. Raises 22P02 if the claims are not JSON.
create or replace function agent_runtime_private.jwt_agent_id() returns text
language sql stable set search_path = '' as $$
  select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'agent_id'
$$;
revoke all on function agent_runtime_private.jwt_agent_id() from public, anon, authenticated, service_role;

-- assert_acting_as(p_agent text) -> void: returns when the caller may act as agent p_agent: a
-- trusted caller as anyone, an 'authenticated' caller only as the agent in its JWT's 'agent_id'
-- claim. Raises AR403 otherwise (anon and authenticator never act as an agent).
create or replace function agent_runtime_private.assert_acting_as(p_agent text) returns void
language plpgsql stable set search_path = '' as $$
declare
  v_role text := agent_runtime_private.caller_role();
begin
  if v_role not in ('anon', 'authenticated', 'authenticator') then
    return;  -- trusted: the service role, the owner, a role granted by the operator
  end if;
  if v_role = 'authenticated' and agent_runtime_private.jwt_agent_id() = p_agent then
    return;
  end if;
  raise exception 'not allowed to act as agent %', coalesce(p_agent, '<null>')
    using errcode = 'AR403', hint = 'an agent token may only act as the agent in its agent_id claim';
end
$$;
revoke all on function agent_runtime_private.assert_acting_as(text) from public, anon, authenticated, service_role;

-- ms(p_ms bigint, p_what text, p_min bigint, p_max bigint) -> interval: milliseconds from a client
-- as an interval; null stays null (the caller's default). Raises AR400 naming p_what when p_ms is
-- outside [p_min, p_max].
create or replace function agent_runtime_private.ms(p_ms bigint, p_what text, p_min bigint, p_max bigint)
returns interval language plpgsql immutable set search_path = '' as $$
begin
  if p_ms is null then
    return null;
  end if;
  if p_ms < p_min or p_ms > p_max then
    raise exception '% must be between % and % ms (got %)', p_what, p_min, p_max, p_ms
      using errcode = 'AR400';
  end if;
  return p_ms * interval '1 millisecond';
end
$$;
revoke all on function agent_runtime_private.ms(bigint, text, bigint, bigint) from public, anon, authenticated, service_role;

-- agent_exists(p_agent) -> void: returns when agent p_agent is registered.
-- Raises: AR404 unknown agent.
create or replace function agent_runtime_private.agent_exists(p_agent text) returns void
language plpgsql stable set search_path = '' as $$
begin
  if not exists (select 1 from public.distributed_agents where id = p_agent) then
    raise exception 'unknown agent %', p_agent using errcode = 'AR404',
      hint = 'register the agent first';
  end if;
end
$$;
revoke all on function agent_runtime_private.agent_exists(text) from public, anon, authenticated, service_role;

-- register_agent(p_agent_id, p_name, p_kind, p_capabilities, p_version, p_host, p_pid, p_metadata,
-- p_heartbeat_ttl_ms) -> jsonb: registers (or resumes, after a crash) the agent, marks it online,
-- creates its inbox channel 'agent:<id>'; returns the agent document plus 'resumed'.
-- Raises: AR400 invalid input; AR401 invalid name; AR403 not allowed.
create or replace function public.register_agent(
  p_agent_id text, p_name text, p_kind text default 'agent', p_capabilities text[] default '{}',
  p_version text default '', p_host text default '', p_pid integer default null,
  p_metadata jsonb default '{}'::jsonb, p_heartbeat_ttl_ms integer default 15000
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_ttl interval := coalesce(agent_runtime_private.ms(p_heartbeat_ttl_ms, 'heartbeat ttl', 1000, 3600000),
                             interval '15 seconds');
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
  v_resumed boolean;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_agent_id is null or p_agent_id !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$' then
    raise exception 'invalid agent id %', coalesce(p_agent_id, '<null>') using errcode = 'AR401',
      hint = '1-128 characters: letters, digits, _ . - (not starting with a symbol)';
  end if;
  if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,127}$' then
    raise exception 'invalid agent name %', coalesce(p_name, '<null>') using errcode = 'AR401';
  end if;
  if p_metadata is null or jsonb_typeof(p_metadata) <> 'object' then
    raise exception 'metadata must be a JSON object' using errcode = 'AR400';
  end if;
  select exists (select 1 from public.distributed_agents where id = p_agent_id) into v_resumed;
  insert into public.distributed_agents as a (id, name, kind, capabilities, version, host, pid, metadata,
                                       status, heartbeat_ttl)
  values (p_agent_id, p_name, coalesce(p_kind, 'agent'), coalesce(p_capabilities, '{}'),
          coalesce(p_version, ''), coalesce(p_host, ''), p_pid, p_metadata, 'online', v_ttl)
  on conflict (id) do update set
    name = excluded.name, kind = excluded.kind, capabilities = excluded.capabilities,
    version = excluded.version, host = excluded.host, pid = excluded.pid,
    metadata = excluded.metadata, status = 'online', heartbeat_ttl = excluded.heartbeat_ttl,
    started_at = now(), last_seen = now(), incarnation = a.incarnation + 1
  returning * into v_agent;

  insert into public.agent_presence as p (agent_id, status, heartbeat_at, expires_at, changed_at)
  values (p_agent_id, 'online', now(), now() + v_ttl, now())
  on conflict (agent_id) do update set
    status = 'online', heartbeat_at = now(), expires_at = now() + v_ttl, changed_at = now()
  returning * into v_presence;

  -- The agent's inbox: a direct channel only it consumes.
  insert into public.communication_channels (name, kind, owner_id, created_by)
  values ('agent:' || p_agent_id, 'direct', p_agent_id, p_agent_id)
  on conflict (name) do nothing;

  return (select to_jsonb(d.doc) from agent_runtime_private.agent_documents d where d.id = p_agent_id) || jsonb_build_object('resumed', v_resumed);
exception
  when check_violation then
    raise exception 'invalid agent registration: %', sqlerrm using errcode = 'AR400';
end
$$;
revoke all on function public.register_agent(text, text, text, text[], text, text, integer, jsonb, integer) from public, anon, authenticated;
grant execute on function public.register_agent(text, text, text, text[], text, text, integer, jsonb, integer) to authenticated, service_role;

-- update_agent_last_seen(p_agent_id, p_status, p_load, p_info) -> jsonb: the heartbeat (the seed's
-- name): refreshes presence expiry and last_seen, optionally status/load/info; returns the agent.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent.
create or replace function public.update_agent_last_seen(
  p_agent_id text, p_status text default null, p_load real default null, p_info jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_status is not null and p_status not in ('online', 'busy', 'away', 'offline') then
    raise exception 'invalid status %', p_status using errcode = 'AR400';
  end if;
  if p_load is not null and (p_load < 0 or p_load > 1 or p_load = 'NaN') then
    raise exception 'load must be between 0 and 1' using errcode = 'AR400';
  end if;
  if p_info is not null and jsonb_typeof(p_info) <> 'object' then
    raise exception 'info must be a JSON object' using errcode = 'AR400';
  end if;
  update public.distributed_agents set last_seen = now(),
    status = coalesce(p_status, case when status = 'offline' then 'online' else status end)
  where id = p_agent_id returning * into v_agent;
  if not found then
    perform agent_runtime_private.agent_exists(p_agent_id);
  end if;
  update public.agent_presence set
    heartbeat_at = now(),
    expires_at = now() + v_agent.heartbeat_ttl,
    -- An agent whose presence had lapsed comes back online on its next heartbeat.
    status = coalesce(p_status, case when status = 'offline' or expires_at <= now()
                                     then v_agent.status else status end),
    load = coalesce(p_load, load),
    info = coalesce(p_info, info)
  where agent_id = p_agent_id
  returning * into v_presence;
  return (select to_jsonb(d.doc) from agent_runtime_private.agent_documents d where d.id = p_agent_id);
end
$$;
revoke all on function public.update_agent_last_seen(text, text, real, jsonb) from public, anon, authenticated;
grant execute on function public.update_agent_last_seen(text, text, real, jsonb) to authenticated, service_role;

-- set_agent_status(p_agent_id, p_status, p_load) -> jsonb: a heartbeat that sets the status.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent.
create or replace function public.set_agent_status(p_agent_id text, p_status text, p_load real default null)
returns jsonb language sql security definer set search_path = '' as $$
  select public.update_agent_last_seen(p_agent_id, p_status, p_load)
$$;
revoke all on function public.set_agent_status(text, text, real) from public, anon, authenticated;
grant execute on function public.set_agent_status(text, text, real) to authenticated, service_role;

-- deregister_agent(p_agent_id) -> jsonb: orderly leave: marks the agent offline and releases its
-- locks, keeps its row so the same id can resume; returns the agent.
-- Raises: AR403 not allowed; AR404 unknown agent.
create or replace function public.deregister_agent(p_agent_id text) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_agent public.distributed_agents;
  v_presence public.agent_presence;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  update public.distributed_agents set status = 'offline', last_seen = now()
  where id = p_agent_id returning * into v_agent;
  if not found then
    perform agent_runtime_private.agent_exists(p_agent_id);
  end if;
  update public.agent_presence set status = 'offline', expires_at = now(), changed_at = now()
  where agent_id = p_agent_id returning * into v_presence;
  delete from public.distributed_locks where owner_id = p_agent_id;
  return (select to_jsonb(d.doc) from agent_runtime_private.agent_documents d where d.id = p_agent_id);
end
$$;
revoke all on function public.deregister_agent(text) from public, anon, authenticated;
grant execute on function public.deregister_agent(text) to authenticated, service_role;

-- list_agents(p_capability, p_online_only) -> jsonb: the agents (online ones by default), optionally
-- those with a capability, ordered by id.
-- Raises: nothing of its own.
create or replace function public.list_agents(p_capability text default null, p_online_only boolean default true)
returns jsonb language sql stable security definer set search_path = '' as $$
  select coalesce(json_agg(to_json(d.doc) order by d.id), '[]'::json)::jsonb
  from agent_runtime_private.agent_documents d
  where (p_capability is null or d.capabilities @> array[p_capability])
    and (not p_online_only or (d.presence_status <> 'offline' and d.presence_expires_at > now()))
$$;
revoke all on function public.list_agents(text, boolean) from public, anon, authenticated;
grant execute on function public.list_agents(text, boolean) to authenticated, service_role;

-- channel(p_name) -> communication_channels: the channel's row.
-- Raises: AR404 unknown agent; AR405 unknown channel or not subscribed.
create or replace function agent_runtime_private.channel(p_name text)
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
create or replace function agent_runtime_private.channel_json(c public.communication_channels) returns jsonb
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
create or replace function public.ensure_channel(
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
create or replace function public.subscribe_channel(p_agent_id text, p_channel text, p_from text default 'latest')
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
  on conflict (channel_id, agent_id) do update set updated_at = now()
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
create or replace function public.unsubscribe_channel(p_agent_id text, p_channel text) returns boolean
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

-- messages_json(p_messages, p_channel, p_attempts) -> json: messages as delivered (fetch, claim,
-- wake-ups, dead letters), in the arrays' order, p_attempts[i] the delivery attempt of
-- p_messages[i]; null for no messages. The one definition of a message's document (message_wire's
-- fields). It takes a batch, not one message, because a function with a pinned search_path is not
-- inlined: called once per message it cost the fetch path microseconds per message.
-- Raises: nothing of its own.
create or replace function agent_runtime_private.messages_json(p_messages public.distributed_messages[], p_channel text,
                                                    p_attempts integer[])
returns json language sql stable set search_path = '' as $$
  select json_agg(row(m.id, p_channel, m.seq, m.sender_id, m.payload, m.headers, m.size_bytes, m.correlation_id,
                      m.reply_to, m.idempotency_key, m.created_at, m.expires_at,
                      p_attempts[m.ordinality])::agent_runtime_private.message_wire order by m.ordinality)
  from unnest(p_messages) with ordinality as m
$$;
revoke all on function agent_runtime_private.messages_json(public.distributed_messages[], text, integer[]) from public, anon, authenticated, service_role;

-- message_json(m, p_channel, p_attempts) -> jsonb: one message's document as jsonb (list_dead_letters
-- adds keys to it).
-- Raises: nothing of its own.
create or replace function agent_runtime_private.message_json(m public.distributed_messages, p_channel text,
                                                   p_attempts integer)
returns jsonb language sql stable set search_path = '' as $$
  select (agent_runtime_private.messages_json(array[m], p_channel, array[p_attempts]) -> 0)::jsonb
$$;
revoke all on function agent_runtime_private.message_json(public.distributed_messages, text, integer) from public, anon, authenticated, service_role;

-- list_channels() -> jsonb: every channel the caller may read (an agent token: not other agents'
-- inboxes) with its settings, online subscribers, ready/in-flight and dead message counts.
-- Raises: nothing of its own.
create or replace function public.list_channels() returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(agent_runtime_private.channel_json(c) || jsonb_build_object(
           'subscribers', (select count(*) from public.channel_subscriptions s
                           join public.agent_presence p on p.agent_id = s.agent_id
                           where s.channel_id = c.id and p.status <> 'offline' and p.expires_at > now()),
           'ready', (select count(*) from public.distributed_messages m
                     where m.channel_id = c.id and m.state in ('ready', 'inflight')
                       and c.kind <> 'broadcast'),
           'dead', (select count(*) from public.distributed_messages m
                    where m.channel_id = c.id and m.state = 'dead'))
         order by c.name), '[]'::jsonb)
  from public.communication_channels c
  -- What RLS lets the caller read: an agent token sees no other agent's inbox.
  -- (Scalar subqueries: evaluated once per call, not per row.)
  where c.kind <> 'direct' or (select agent_runtime_private.is_trusted())
     or c.owner_id = (select agent_runtime_private.jwt_agent_id())
$$;
revoke all on function public.list_channels() from public, anon, authenticated;
grant execute on function public.list_channels() to authenticated, service_role;

-- Sends a batch to one channel. p_messages is a JSON array of objects with 'payload' and optional
-- 'headers', 'idempotency_key', 'correlation_id', 'reply_to', 'ttl_ms', 'delay_ms'. A message whose
-- (sender, idempotency_key) was already sent is not sent again; its original id is returned with
-- duplicate = true. All or nothing: one bad message refuses the batch.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR408 concurrent conflict, retry; AR413 payload too large.
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
  v_result jsonb;
begin
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
           count(p.idempotency_key)
    into v_out, v_malformed, v_oversized, v_keys
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
  -- either be ignored or hold back everything after it, so it is refused (new in this migration).
  if v_channel.kind = 'broadcast' and exists (select 1 from unnest(v_out) o where o.delay > interval '0') then
    raise exception 'delay is for queue and direct channels; channel % is a broadcast channel', v_channel.name
      using errcode = 'AR400';
  end if;

  -- Taking the channel row lock serialises producers on this channel until commit, so seq order
  -- equals commit order. Everything above ran without it; what follows holds it until commit.
  if v_keys = 0 then
    with numbered as (
      update public.communication_channels set last_seq = last_seq + v_count
      where id = v_channel.id
      returning last_seq
    ), inserted as (
      insert into public.distributed_messages (channel_id, seq, sender_id, payload, headers, size_bytes,
                                        correlation_id, reply_to, expires_at, visible_at)
      select v_channel.id, n.last_seq - v_count + o.ord, p_agent_id, o.payload, o.headers,
             o.size_bytes, o.correlation_id, o.reply_to, now() + coalesce(o.ttl, v_channel.message_ttl),
             now() + coalesce(o.delay, interval '0')
      from numbered n cross join unnest(v_out) o
      returning id, seq
    )
    select jsonb_agg(jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', false) order by i.seq)
    into v_result from inserted i;
    if v_result is null then  -- the channel went away meanwhile
      raise exception 'unknown channel %', p_channel using errcode = 'AR405';
    end if;
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
    returning last_seq into v_channel.last_seq;

    with fresh as (
      select o.*, v_channel.last_seq - v_count + row_number() over (order by o.ord) as seq
      from unnest(v_out) o where o.existing_id is null and o.dup_of is null
    ), inserted as (
      insert into public.distributed_messages (channel_id, seq, sender_id, payload, headers, size_bytes,
                                        correlation_id, reply_to, idempotency_key, expires_at,
                                        visible_at)
      select v_channel.id, f.seq, p_agent_id, f.payload, f.headers, f.size_bytes, f.correlation_id,
             f.reply_to, f.idempotency_key, now() + coalesce(f.ttl, v_channel.message_ttl),
             now() + coalesce(f.delay, interval '0')
      from fresh f
      returning id, seq
    )
    select jsonb_agg(r.j order by r.ord) into v_result from (
      select f.ord, jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', false) as j
      from fresh f join inserted i on i.seq = f.seq
      union all
      select o.ord, jsonb_build_object('id', o.existing_id, 'seq', o.existing_seq, 'duplicate', true)
      from unnest(v_out) o where o.existing_id is not null
      union all
      select o.ord, jsonb_build_object('id', i.id, 'seq', i.seq, 'duplicate', true)
      from unnest(v_out) o join fresh f on f.ord = o.dup_of join inserted i on i.seq = f.seq
    ) r;
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

-- send_message(p_agent_id, p_channel, p_payload, p_headers, p_idempotency_key, p_correlation_id,
-- p_reply_to, p_ttl_ms, p_delay_ms) -> jsonb: one message through send_messages; returns {id, seq,
-- duplicate}.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR408 concurrent conflict, retry; AR413 payload too large.
create or replace function public.send_message(
  p_agent_id text, p_channel text, p_payload jsonb, p_headers jsonb default '{}'::jsonb,
  p_idempotency_key text default null, p_correlation_id uuid default null,
  p_reply_to text default null, p_ttl_ms bigint default null, p_delay_ms bigint default null
) returns jsonb
language sql security definer set search_path = '' as $$
  select public.send_messages(p_agent_id, p_channel, jsonb_build_array(jsonb_strip_nulls(
    jsonb_build_object('payload', p_payload, 'headers', coalesce(p_headers, '{}'::jsonb),
                       'idempotency_key', p_idempotency_key, 'correlation_id', p_correlation_id,
                       'reply_to', p_reply_to, 'ttl_ms', p_ttl_ms, 'delay_ms', p_delay_ms))
    || case when p_payload = 'null'::jsonb then jsonb_build_object('payload', 'null'::jsonb)
            else '{}'::jsonb end)) -> 0
$$;
revoke all on function public.send_message(text, text, jsonb, jsonb, text, uuid, text, bigint, bigint) from public, anon, authenticated;
grant execute on function public.send_message(text, text, jsonb, jsonb, text, uuid, text, bigint, bigint) to authenticated, service_role;

-- Broadcast: the next messages after this subscriber's cursor, in seq order, replayed dead letters
-- first. Head-of-line retry: while a nacked message waits for its retry time nothing is returned.
-- p_ack_ids (optional): acknowledge these first, in the same transaction (ack_messages), so a
-- consumer's acks ride along with its next fetch: one round trip instead of two.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR412 channel kind mismatch.
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
  if p_ack_ids is not null then
    perform public.ack_messages(p_agent_id, p_ack_ids);
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
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
            and (expires_at is null or expires_at > now())
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
revoke all on function public.fetch_messages(text, text, integer, bigint[]) from public, anon, authenticated;
grant execute on function public.fetch_messages(text, text, integer, bigint[]) to authenticated, service_role;

-- claim_messages (and fetch_messages, for a retry) compare visible_at with the clock read while
-- they run (clock_timestamp()), not with now().
--
-- now() is the claiming transaction's start time, and it may be earlier than the start of a sender
-- whose commit the claim's snapshot already sees: a claim made right after a wake-up then skipped
-- the message it was woken for (visible_at, the sender's now(), looked a few milliseconds in the
-- future), and since that wake-up was the only one, the message waited for the next safety poll.
-- Seen in tests/failure/test_bad_input_api.py: a claim whose now() was 9 ms before the sender's
-- visible_at, with statement_timestamp() and clock_timestamp() after it and the sender's xid
-- committed in its snapshot. The same holds for a nack with no delay (visible_at is the nacker's
-- now()). clock_timestamp() in the statement is read after its snapshot was taken, so after every
-- commit it sees, and so after the start of every sender it sees.
--
-- Queue and inbox: claims up to p_limit visible messages in seq order for p_visibility_ms.
-- A claimed message whose visibility timed out is claimable again; one that has used up its
-- attempts goes to the dead letters instead. SKIP LOCKED: concurrent consumers never get the same
-- message and never wait on each other.
-- p_ack_ids (optional): acknowledge these first, in the same transaction, as fetch_messages does.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR412 channel kind mismatch.
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
      and (expires_at is null or expires_at > now())
    order by seq
    limit p_limit
    for update skip locked
  ), claimed as (
    update public.distributed_messages m set state = 'inflight', attempts = m.attempts + 1,
                                      claimed_by = p_agent_id, visible_at = now() + v_visibility
    from picked where m.id = picked.id
    returning m as msg, m.seq as seq, m.attempts as attempts
  )
  select agent_runtime_private.messages_json(array_agg(c.msg order by c.seq), v_channel.name,
                                             array_agg(c.attempts order by c.seq))
  into v_result from claimed c;
  return coalesce(v_result, '[]'::json);
end
$$;
revoke all on function public.claim_messages(text, text, integer, bigint, bigint[]) from public, anon, authenticated;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[]) to authenticated, service_role;

-- Acknowledges messages this agent received. Queue/inbox: only the current claimant's ack counts
-- (a stale ack after the message was handed to someone else is ignored). Broadcast: the ack is
-- cumulative, it moves the subscriber's cursor to the highest acked seq of that channel, and it
-- resolves replayed dead letters. Returns the number of messages acknowledged.
-- (As before; the queue update, and its statement trigger, run only when one of the messages is
-- in flight for this agent, which a broadcast message never is.)
-- Raises: AR400 invalid input; AR403 not allowed.
create or replace function public.ack_messages(p_agent_id text, p_message_ids bigint[]) returns integer
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off as $$
declare
  v_acked integer := 0;
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_message_ids is null or cardinality(p_message_ids) > 10000 then
    raise exception 'message ids must be an array of at most 10000' using errcode = 'AR400';
  end if;

  -- (coalesce: a plan cached when the table was small must not scan the claim index instead of
  -- looking the ids up)
  if exists (select 1 from public.distributed_messages m
             where m.id = any (p_message_ids) and coalesce(m.state, '') = 'inflight'
               and m.claimed_by = p_agent_id) then
    update public.distributed_messages m set state = 'acked', acked_at = now(), claimed_by = p_agent_id
    from public.communication_channels c
    where m.id = any (p_message_ids) and c.id = m.channel_id and c.kind <> 'broadcast'
      and coalesce(m.state, '') = 'inflight' and m.claimed_by = p_agent_id;
    get diagnostics v_acked = row_count;
  end if;

  with acked as (
    select m.channel_id, max(m.seq) as seq, count(*) as n
    from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id
    where m.id = any (p_message_ids) and c.kind = 'broadcast'
    group by m.channel_id
  ), moved as (
    update public.channel_subscriptions s set
      cursor_seq = greatest(s.cursor_seq, a.seq),
      retry_seq = case when s.retry_seq <= a.seq then null else s.retry_seq end,
      retry_attempts = case when s.retry_seq <= a.seq then 0 else s.retry_attempts end,
      retry_at = case when s.retry_seq <= a.seq then null else s.retry_at end,
      updated_at = now()
    from acked a
    where s.channel_id = a.channel_id and s.agent_id = p_agent_id
    returning a.n
  )
  select coalesce(sum(n), 0) into v_n from moved;
  v_acked := v_acked + v_n;

  update public.message_dead_letters set state = 'resolved'
  where agent_id = p_agent_id and message_id = any (p_message_ids) and state = 'replaying';
  return v_acked;
end
$$;
revoke all on function public.ack_messages(text, bigint[]) from public, anon, authenticated;
grant execute on function public.ack_messages(text, bigint[]) to authenticated, service_role;

-- Negative acknowledgement: the message is redelivered after p_delay_ms, or goes to the dead
-- letters once it has used the channel's max attempts (or at once with p_dead => true, for a
-- payload that can never be processed). Returns {state: 'retry'|'dead'|'ignored', attempts,
-- retry_at}. 'ignored' means this agent no longer holds the message. p_release => true hands back
-- a queue/inbox message that was claimed but never handed to a handler (a consumer closing with
-- a prefetched batch): the claim does not count as an attempt, so it can never dead-letter it.
-- Raises: AR400 invalid input; AR403 not allowed; AR406 unknown message.
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
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  -- Locked: a claim by another consumer committing meanwhile is seen (and the nack ignored), not
  -- overwritten by this late nack.
  select * into v_msg from public.distributed_messages where id = p_message_id for update;
  if not found then
    raise exception 'unknown message %', p_message_id using errcode = 'AR406';
  end if;
  select * into v_channel from public.communication_channels where id = v_msg.channel_id;

  if v_channel.kind <> 'broadcast' then
    if v_msg.state <> 'inflight' or v_msg.claimed_by is distinct from p_agent_id then
      return jsonb_build_object('state', 'ignored', 'attempts', v_msg.attempts);
    end if;
    if p_release and not p_dead then
      update public.distributed_messages set state = 'ready', claimed_by = null,
                                      attempts = greatest(attempts - 1, 0), visible_at = now() + v_delay
      where id = p_message_id returning * into v_msg;
      return jsonb_build_object('state', 'retry', 'attempts', v_msg.attempts, 'retry_at', v_msg.visible_at);
    end if;
    if p_dead or v_msg.attempts >= v_channel.max_attempts then
      update public.distributed_messages set state = 'dead', last_error = v_reason, claimed_by = null
      where id = p_message_id;
      return jsonb_build_object('state', 'dead', 'attempts', v_msg.attempts);
    end if;
    update public.distributed_messages set state = 'ready', claimed_by = null, last_error = v_reason,
                                    visible_at = now() + v_delay
    where id = p_message_id returning * into v_msg;
    return jsonb_build_object('state', 'retry', 'attempts', v_msg.attempts, 'retry_at', v_msg.visible_at);
  end if;

  -- Broadcast: a replayed dead letter failing again goes straight back to dead.
  select * into v_dead from public.message_dead_letters
  where message_id = p_message_id and agent_id = p_agent_id and state = 'replaying';
  if found then
    update public.message_dead_letters set state = 'dead', attempts = attempts + 1, reason = v_reason,
                                    dead_at = now()
    where id = v_dead.id;
    return jsonb_build_object('state', 'dead', 'attempts', v_dead.attempts + 1);
  end if;

  select * into v_sub from public.channel_subscriptions
  where channel_id = v_channel.id and agent_id = p_agent_id for update;
  if not found or v_msg.seq <= v_sub.cursor_seq then
    return jsonb_build_object('state', 'ignored', 'attempts', 0);
  end if;
  v_attempts := case when v_sub.retry_seq = v_msg.seq then v_sub.retry_attempts + 1 else 1 end;
  if p_dead or v_attempts >= v_channel.max_attempts then
    insert into public.message_dead_letters (message_id, agent_id, attempts, reason)
    values (p_message_id, p_agent_id, v_attempts, v_reason)
    on conflict (message_id, agent_id) do update set state = 'dead', attempts = excluded.attempts,
      reason = excluded.reason, dead_at = now();
    -- Skip past the dead message (everything before it was delivered in order).
    update public.channel_subscriptions set cursor_seq = v_msg.seq, retry_seq = null, retry_attempts = 0,
                                     retry_at = null, updated_at = now()
    where channel_id = v_channel.id and agent_id = p_agent_id;
    return jsonb_build_object('state', 'dead', 'attempts', v_attempts);
  end if;
  -- Rewind to just before the nacked message: it and everything after are delivered again.
  update public.channel_subscriptions set cursor_seq = v_msg.seq - 1, retry_seq = v_msg.seq,
                                   retry_attempts = v_attempts, retry_at = now() + v_delay,
                                   updated_at = now()
  where channel_id = v_channel.id and agent_id = p_agent_id;
  return jsonb_build_object('state', 'retry', 'attempts', v_attempts, 'retry_at', now() + v_delay);
end
$$;
revoke all on function public.nack_message(text, bigint, bigint, text, boolean, boolean) from public, anon, authenticated;
grant execute on function public.nack_message(text, bigint, bigint, text, boolean, boolean) to authenticated, service_role;

-- Extends the visibility of messages this agent holds (a long handler keeps its claim).
-- Raises: AR400 invalid input; AR403 not allowed.
create or replace function public.extend_visibility(p_agent_id text, p_message_ids bigint[], p_visibility_ms bigint)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  update public.distributed_messages
  set visible_at = now() + agent_runtime_private.ms(p_visibility_ms, 'visibility timeout', 100, 43200000)
  where id = any (p_message_ids) and state = 'inflight' and claimed_by = p_agent_id;
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.extend_visibility(text, bigint[], bigint) from public, anon, authenticated;
grant execute on function public.extend_visibility(text, bigint[], bigint) to authenticated, service_role;

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
      where m.state = 'dead' and (v_channel_id is null or m.channel_id = v_channel_id)
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

-- Replays dead letters by message id: a queue message becomes ready again with fresh attempts;
-- a broadcast dead letter is delivered again to the subscriber it died for. Returns the count.
-- Raises: AR400 invalid input; AR403 not allowed.
create or replace function public.replay_dead_letters(p_agent_id text, p_message_ids bigint[]) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
  v_m integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_message_ids is null or cardinality(p_message_ids) > 10000 then
    raise exception 'message ids must be an array of at most 10000' using errcode = 'AR400';
  end if;
  -- An agent token replays only what it could consume: its inbox, queues it subscribes to, and
  -- its own broadcast dead letters. Trusted callers (operators, the CLI) replay anything.
  update public.distributed_messages m set state = 'ready', attempts = 0, visible_at = now(), claimed_by = null,
                                    expires_at = case when expires_at <= now() then null else expires_at end
  where m.id = any (p_message_ids) and m.state = 'dead'
    and (agent_runtime_private.is_trusted() or exists (
      select 1 from public.communication_channels c where c.id = m.channel_id and (c.owner_id = p_agent_id
        or exists (select 1 from public.channel_subscriptions s
                   where s.channel_id = c.id and s.agent_id = p_agent_id))));
  get diagnostics v_n = row_count;
  update public.message_dead_letters set state = 'replaying', replayed_at = now()
  where message_id = any (p_message_ids) and state = 'dead'
    and (agent_runtime_private.is_trusted() or agent_id = p_agent_id);
  get diagnostics v_m = row_count;
  return v_n + v_m;
end
$$;
revoke all on function public.replay_dead_letters(text, bigint[]) from public, anon, authenticated;
grant execute on function public.replay_dead_letters(text, bigint[]) to authenticated, service_role;

-- lock_json(l, p_acquired) -> jsonb: a lease as returned to its (would-be) holder; lease id and
-- token only when acquired.
-- Raises: nothing of its own.
create or replace function agent_runtime_private.lock_json(l public.distributed_locks, p_acquired boolean)
returns jsonb language sql stable set search_path = '' as $$
  select jsonb_build_object('key', l.key, 'acquired', p_acquired, 'owner_id', l.owner_id,
                            'lease_id', case when p_acquired then l.lease_id end,
                            'token', case when p_acquired then l.token end,
                            'acquired_at', l.acquired_at, 'expires_at', l.expires_at,
                            'ttl_ms', greatest(0, (extract(epoch from l.expires_at - now()) * 1000)::bigint))
$$;
revoke all on function agent_runtime_private.lock_json(public.distributed_locks, boolean) from public, anon, authenticated, service_role;

-- Takes the lease on p_key if it is free or expired (or already held by this same lease, which
-- extends it). Every new holder gets a fresh fencing token from a global sequence, so tokens
-- strictly increase per key across owners. Returns {acquired, token, expires_at, owner_id, ttl_ms};
-- when not acquired, ttl_ms says how long the current holder's lease still runs.
-- Raises: AR400 invalid input; AR401 invalid name; AR403 not allowed; AR404 unknown agent.
create or replace function public.acquire_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint,
                                    p_metadata jsonb default '{}'::jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_ttl interval := agent_runtime_private.ms(p_ttl_ms, 'lock ttl', 100, 86400000);
  v_lock public.distributed_locks;
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
  if found and v_lock.expires_at > now() and not (v_lock.lease_id = p_lease_id and v_lock.owner_id = p_agent_id) then
    return agent_runtime_private.lock_json(v_lock, false);
  end if;
  insert into public.distributed_locks as l (key, owner_id, lease_id, token, expires_at, metadata)
  values (p_key, p_agent_id, p_lease_id, nextval('public.distributed_locks_token_seq'), now() + v_ttl,
          coalesce(p_metadata, '{}'::jsonb))
  on conflict (key) do update set
    owner_id = excluded.owner_id, lease_id = excluded.lease_id,
    token = case when l.lease_id = excluded.lease_id and l.owner_id = excluded.owner_id
                      and l.expires_at > now() then l.token
                 else excluded.token end,
    acquired_at = case when l.lease_id = excluded.lease_id and l.owner_id = excluded.owner_id
                            and l.expires_at > now() then l.acquired_at
                       else now() end,
    renewed_at = now(), expires_at = excluded.expires_at, metadata = excluded.metadata
  -- The same lease extends only for its own owner: another agent presenting it takes nothing.
  where l.expires_at <= now() or (l.lease_id = excluded.lease_id and l.owner_id = excluded.owner_id)
  returning * into v_lock;
  if found then
    return agent_runtime_private.lock_json(v_lock, true);
  end if;
  select * into v_lock from public.distributed_locks where key = p_key;
  return agent_runtime_private.lock_json(v_lock, false);
end
$$;
revoke all on function public.acquire_lock(text, text, uuid, bigint, jsonb) from public, anon, authenticated;
grant execute on function public.acquire_lock(text, text, uuid, bigint, jsonb) to authenticated, service_role;

-- Extends a held lease. Raises AR409 if this lease does not hold the key (never held, released,
-- expired, or taken over): the holder must stop acting as owner.
-- Raises: AR400 invalid input; AR403 not allowed; AR409 lock not held.
create or replace function public.renew_lock(p_agent_id text, p_key text, p_lease_id uuid, p_ttl_ms bigint)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_ttl interval := agent_runtime_private.ms(p_ttl_ms, 'lock ttl', 100, 86400000);
  v_lock public.distributed_locks;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  update public.distributed_locks set expires_at = now() + v_ttl, renewed_at = now()
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id and expires_at > now()
  returning * into v_lock;
  if not found then
    raise exception 'lock % is not held by this lease (expired, released or taken over)', p_key
      using errcode = 'AR409';
  end if;
  return agent_runtime_private.lock_json(v_lock, true);
end
$$;
revoke all on function public.renew_lock(text, text, uuid, bigint) from public, anon, authenticated;
grant execute on function public.renew_lock(text, text, uuid, bigint) to authenticated, service_role;

-- Releases a held lease; returns false if it was not held (already expired or taken over).
-- Raises: AR403 not allowed.
create or replace function public.release_lock(p_agent_id text, p_key text, p_lease_id uuid) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  delete from public.distributed_locks
  where key = p_key and lease_id = p_lease_id and owner_id = p_agent_id and expires_at > now();
  return found;
end
$$;
revoke all on function public.release_lock(text, text, uuid) from public, anon, authenticated;
grant execute on function public.release_lock(text, text, uuid) to authenticated, service_role;

-- Fencing check for a protected write: raises AR422 unless p_token is the live holder's token.
-- Call it in the same transaction as the write it guards. The lock row is share-locked until that
-- transaction ends, so no one can take the lease over between the check and the write's commit
-- (a successor's acquire waits for it): writes never go back to an older token. Volatile, as it locks.
-- Raises: AR422 stale fencing token.
create or replace function public.check_fencing_token(p_key text, p_token bigint) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  perform 1 from public.distributed_locks
  where key = p_key and token = p_token and expires_at > now()
  for share;
  if not found then
    raise exception 'fencing token % is not the current holder''s token for %', p_token, p_key
      using errcode = 'AR422';
  end if;
  return true;
end
$$;
revoke all on function public.check_fencing_token(text, bigint) from public, anon, authenticated;
grant execute on function public.check_fencing_token(text, bigint) to authenticated, service_role;

-- list_locks() -> jsonb: the live leases (key, owner, token, times, metadata) ordered by key.
-- Raises: nothing of its own.
create or replace function public.list_locks() returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'key', key, 'owner_id', owner_id, 'token', token, 'acquired_at', acquired_at,
           'expires_at', expires_at, 'metadata', metadata) order by key), '[]'::jsonb)
  from public.distributed_locks where expires_at > now()
$$;
revoke all on function public.list_locks() from public, anon, authenticated;
grant execute on function public.list_locks() to authenticated, service_role;

-- Records a batch of aggregated figures into one-minute buckets (by the database clock):
-- p_metrics is a JSON array of {metric, channel?, count, sum, min?, max?}. Returns rows written.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent.
create or replace function public.record_communication_metrics(p_agent_id text, p_metrics jsonb) returns integer
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
           date_bin(interval '1 minute', now(), timestamptz '2000-01-01'),
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
create or replace function public.get_communication_metrics(p_agent_id text default null, p_metric text default null,
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
                             now() - coalesce(p_since_ms, 3600000) * interval '1 millisecond',
                             timestamptz '2000-01-01')
    group by agent_id, channel, metric
  ) s
$$;
revoke all on function public.get_communication_metrics(text, text, bigint) from public, anon, authenticated;
grant execute on function public.get_communication_metrics(text, text, bigint) to authenticated, service_role;

-- cleanup_expired_messages(p_limit) -> integer: deletes up to p_limit messages past their TTL or
-- their channel's retention, and acked ones after min(retention, 1 hour); returns the count.
-- Maintenance: trusted callers only.
-- Raises: AR403 not allowed.
create or replace function public.cleanup_expired_messages(p_limit integer default 10000) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_expired_messages');
  delete from public.distributed_messages where id in (
    select m.id from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id
    where (m.expires_at <= now() and m.state <> 'dead')
       or m.created_at < now() - c.retention
       or (m.state = 'acked' and m.acked_at < now() - least(c.retention, interval '1 hour'))
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
create or replace function public.cleanup_expired_locks() returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_expired_locks');
  delete from public.distributed_locks where expires_at <= now();
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
create or replace function public.cleanup_stale_presence() returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_stale_presence');
  update public.agent_presence set status = 'offline', changed_at = now()
  where status <> 'offline' and expires_at <= now();
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
create or replace function public.cleanup_old_metrics(p_older_than_ms bigint default 604800000) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_n integer;
begin
  perform agent_runtime_private.assert_trusted('cleanup_old_metrics');
  delete from public.communication_metrics
  where bucket < now() - agent_runtime_private.ms(p_older_than_ms, 'metrics retention', 60000, 315360000000);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.cleanup_old_metrics(bigint) from public, anon, authenticated;
grant execute on function public.cleanup_old_metrics(bigint) to service_role;

-- run_cleanup(p_metrics_retention_ms) -> jsonb: every cleanup above, with their counts. Trusted
-- callers only (the janitor of a trusted agent).
-- Raises: AR400 invalid input; AR403 not allowed.
create or replace function public.run_cleanup(p_metrics_retention_ms bigint default 604800000) returns jsonb
language sql security definer set search_path = '' as $$
  select jsonb_build_object(
    'stale_presence', public.cleanup_stale_presence(),
    'expired_locks', public.cleanup_expired_locks(),
    'expired_messages', public.cleanup_expired_messages(),
    'old_metrics', public.cleanup_old_metrics(p_metrics_retention_ms))
$$;
revoke all on function public.run_cleanup(bigint) from public, anon, authenticated;
grant execute on function public.run_cleanup(bigint) to service_role;

-- One document: agents with presence, channels, subscriptions (edges), recent flows (sender ->
-- channel over the last p_window_ms) and held locks. p_include_offline adds agents that left.
-- Orders: agents by id, channels by name, subscriptions by channel name then agent id, flows
-- busiest first (then by channel and sender, so that ties come out in one order), locks by key;
-- names bytewise (collate "C": they are ASCII).
-- Built as json, not jsonb: at 10,000 agents the document is megabytes, and jsonb would build
-- every object as a tree. See the top of this file for how it is kept fast.
-- (The row types above are the objects' keys: changing a key means changing its type.)
-- Raises: nothing of its own.
create or replace function public.get_network_topology(p_window_ms bigint default 300000,
                                                       p_include_offline boolean default false)
returns json
language plpgsql stable security definer set search_path = '' as $$
declare
  v_agents agent_runtime_private.topology_agent[];
  v_channels agent_runtime_private.topology_channel[];
  v_subscriptions agent_runtime_private.topology_subscription[];
  v_flows agent_runtime_private.topology_flow[];
  -- Computed once: in a filter, now() - interval is a stable expression evaluated for every row.
  v_since timestamptz := now() - coalesce(p_window_ms, 300000) * interval '1 millisecond';
begin
  select array_agg(d.doc order by d.id collate "C")
  into v_agents
  from agent_runtime_private.agent_documents d
  where p_include_offline or (d.presence_status <> 'offline' and d.presence_expires_at > now());

  select array_agg(row(c.name, c.kind, c.owner_id, c.last_seq)::agent_runtime_private.topology_channel
                   order by c.name collate "C")
  into v_channels
  from public.communication_channels c
  where c.kind <> 'direct' or p_include_offline or exists (
    select 1 from public.agent_presence p
    where p.agent_id = c.owner_id and p.status <> 'offline' and p.expires_at > now());

  select array_agg(row(s.agent_id, c.name, s.cursor_seq,
                       case when c.kind = 'broadcast' then c.last_seq - s.cursor_seq end
                   )::agent_runtime_private.topology_subscription
                   order by c.name_rank, s.agent_id collate "C")
  into v_subscriptions
  from public.channel_subscriptions s
  join (select c.id, c.name, c.kind, c.last_seq, row_number() over (order by c.name collate "C") as name_rank
        from public.communication_channels c where c.kind <> 'direct') c on c.id = s.channel_id
  join public.agent_presence p on p.agent_id = s.agent_id
  where p_include_offline or (p.status <> 'offline' and p.expires_at > now());

  select array_agg(row(f.sender_id, c.name, c.owner_id, f.n, f.bytes, f.last_at)::agent_runtime_private.topology_flow
                   order by f.n desc, c.name collate "C", f.sender_id collate "C")
  into v_flows
  from (select channel_id, sender_id, count(*) as n, sum(size_bytes) as bytes, max(created_at) as last_at
        from public.distributed_messages
        where created_at > v_since
        group by channel_id, sender_id) f
  join public.communication_channels c on c.id = f.channel_id;

  return json_build_object(
    'generated_at', now(),
    'window_ms', p_window_ms,
    'agents', coalesce(v_agents, '{}'),
    'channels', coalesce(v_channels, '{}'),
    'subscriptions', coalesce(v_subscriptions, '{}'),
    'flows', coalesce(v_flows, '{}'),
    'locks', public.list_locks());
end
$$;
revoke all on function public.get_network_topology(bigint, boolean) from public, anon, authenticated;
grant execute on function public.get_network_topology(bigint, boolean) to authenticated, service_role;

-- notify(p_topic, p_event, p_payload) -> void: one wake-up, by pg_notify on 'agent_runtime' and by
-- realtime.send (private topic). Raises nothing (realtime.send swallows its errors).
create or replace function agent_runtime_private.notify(p_topic text, p_event text, p_payload jsonb) returns void
language plpgsql set search_path = '' as $$
begin
  perform pg_notify('agent_runtime', (p_payload || jsonb_build_object('t', p_topic, 'e', p_event))::text);
  -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
  -- realtime.messages). realtime.send never raises.
  perform realtime.send(p_payload, p_event, p_topic, true);
end
$$;
revoke all on function agent_runtime_private.notify(text, text, jsonb) from public, anon, authenticated, service_role;

-- New messages: one wake-up per statement and channel, delivered after commit. On a broadcast
-- channel it carries the messages themselves when they are few, small and visible now (see the
-- top of this file); otherwise, and on queues and inboxes, it is the bare hint {c, s}.
-- Raises: nothing of its own.
create or replace function agent_runtime_private.on_messages_inserted() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  r record;
  v_topic text;
  v_messages json;
  v_note text;
begin
  for r in
    select c.id, c.name, c.kind, min(n.seq) as first_seq, max(n.seq) as seq, count(*) as n,
           bool_and(n.visible_at <= now()) as visible, sum(n.size_bytes) as payload_bytes
    from new_rows n join public.communication_channels c on c.id = n.channel_id
    group by c.id, c.name, c.kind
  loop
    v_topic := case when r.kind = 'direct' then r.name else 'channel:' || r.name end;
    v_messages := null;
    if r.kind = 'broadcast' and r.visible and r.n <= 16 and r.seq - r.first_seq + 1 = r.n
       and r.payload_bytes < 6000 then
      select agent_runtime_private.messages_json(array_agg(n::public.distributed_messages order by n.seq), r.name,
                                                 array_agg(1 order by n.seq))
      into v_messages
      from new_rows n where n.channel_id = r.id;
      if octet_length(v_messages::text) >= 6000 then
        v_messages := null;  -- (headers count too)
      end if;
    end if;
    if v_messages is null then
      perform pg_notify('agent_runtime', json_build_object('c', r.name, 's', r.seq, 't', v_topic,
                                                           'e', 'message')::text);
      perform realtime.send(jsonb_build_object('c', r.name, 's', r.seq), 'message', v_topic, true);
    else
      v_note := json_build_object('c', r.name, 's', r.seq, 'f', r.first_seq, 'm', v_messages)::text;
      perform pg_notify('agent_runtime', left(v_note, -1) || ',"t":' || to_json(v_topic)::text
                                         || ',"e":"message"}');
      -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
      -- realtime.messages: only the channel's subscribers hear it). realtime.send never raises.
      perform realtime.send(v_note::jsonb, 'message', v_topic, true);
    end if;
  end loop;
  return null;
end
$$;
revoke all on function agent_runtime_private.on_messages_inserted() from public, anon, authenticated, service_role;

-- A nack with no delay or a replay makes messages visible again: wake consumers.
-- Raises: nothing of its own.
create or replace function agent_runtime_private.on_messages_ready() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  r record;
begin
  for r in
    select c.name, c.kind, max(n.seq) as seq
    from new_rows n join old_rows o on o.id = n.id
    join public.communication_channels c on c.id = n.channel_id
    where n.state = 'ready' and o.state <> 'ready'
    group by c.name, c.kind
  loop
    perform agent_runtime_private.notify(
      case when r.kind = 'direct' then r.name else 'channel:' || r.name end,
      'message', jsonb_build_object('c', r.name, 's', r.seq));
  end loop;
  return null;
end
$$;
revoke all on function agent_runtime_private.on_messages_ready() from public, anon, authenticated, service_role;

-- on_presence_changed() trigger: a join, leave or status change (not a plain heartbeat) notifies
-- 'presence'.
-- Raises: nothing of its own.
create or replace function agent_runtime_private.on_presence_changed() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_event text;
begin
  if tg_op = 'INSERT' then
    v_event := 'join';
  elsif new.status = 'offline' and old.status <> 'offline' then
    v_event := 'leave';
  elsif old.status = 'offline' and new.status <> 'offline' then
    v_event := 'join';
  elsif new.status is distinct from old.status then
    v_event := 'status';
  else
    return null;  -- a plain heartbeat is not an event
  end if;
  perform agent_runtime_private.notify('presence', 'presence',
    jsonb_build_object('a', new.agent_id, 'k', v_event, 'st', new.status));
  return null;
end
$$;
revoke all on function agent_runtime_private.on_presence_changed() from public, anon, authenticated, service_role;

-- on_lock_released() trigger: a deleted lease notifies 'locks' (waiters try again at once).
-- Raises: nothing of its own.
create or replace function agent_runtime_private.on_lock_released() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform agent_runtime_private.notify('locks', 'released', jsonb_build_object('k', old.key));
  return null;
end
$$;
revoke all on function agent_runtime_private.on_lock_released() from public, anon, authenticated, service_role;

drop function agent_runtime_private.message_row(public.distributed_messages, text, integer);

drop function agent_runtime_private.agent_json(public.distributed_agents, public.agent_presence);
drop function agent_runtime_private.agent_row(public.distributed_agents, public.agent_presence);

-- The policies, reading the agent id with auth.jwt().
drop policy agents_read on public.distributed_agents;
drop policy presence_read on public.agent_presence;
drop policy channels_read on public.communication_channels;
drop policy subscriptions_read_own on public.channel_subscriptions;
drop policy messages_read_own_channels on public.distributed_messages;
drop policy dead_letters_read_own on public.message_dead_letters;
drop policy locks_read on public.distributed_locks;
drop policy metrics_read_own on public.communication_metrics;
drop policy agent_runtime_topics_read on realtime.messages;
drop policy agent_runtime_topics_write on realtime.messages;
create policy agents_read on public.distributed_agents for select to authenticated using (true);
create policy presence_read on public.agent_presence for select to authenticated using (true);
create policy channels_read on public.communication_channels for select to authenticated
  using (kind <> 'direct' or owner_id = (select auth.jwt() ->> 'agent_id'));
create policy subscriptions_read_own on public.channel_subscriptions for select to authenticated
  using (agent_id = (select auth.jwt() ->> 'agent_id'));
create policy messages_read_own_channels on public.distributed_messages for select to authenticated
  using (exists (
    select 1 from public.communication_channels c
    where c.id = channel_id and (c.owner_id = (select auth.jwt() ->> 'agent_id')
      or exists (select 1 from public.channel_subscriptions s
                 where s.channel_id = c.id and s.agent_id = (select auth.jwt() ->> 'agent_id')))));
create policy dead_letters_read_own on public.message_dead_letters for select to authenticated
  using (agent_id = (select auth.jwt() ->> 'agent_id'));
create policy locks_read on public.distributed_locks for select to authenticated using (true);
create policy metrics_read_own on public.communication_metrics for select to authenticated
  using (agent_id = (select auth.jwt() ->> 'agent_id'));
create policy agent_runtime_topics_read on realtime.messages for select to authenticated
  using (
    (select realtime.topic()) = 'agent:' || (select auth.jwt() ->> 'agent_id')
    or (select realtime.topic()) in ('presence', 'locks')
    or exists (
      select 1 from public.channel_subscriptions s join public.communication_channels c on c.id = s.channel_id
      where 'channel:' || c.name = (select realtime.topic())
        and s.agent_id = (select auth.jwt() ->> 'agent_id')));
create policy agent_runtime_topics_write on realtime.messages for insert to authenticated
  with check (
    (select realtime.topic()) = 'agent:' || (select auth.jwt() ->> 'agent_id')
    or ((select realtime.topic()) = 'presence' and extension = 'presence'));

-- Tables and sequences: revoke before grant.
grant usage on schema public to anon, authenticated, service_role;

revoke all on table public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics from public, anon, authenticated;
grant select on table public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to authenticated;
grant all on table public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to service_role;

-- setval on the token sequence would reset fencing tokens: only the owner and the service role.
revoke all on sequence public.distributed_locks_token_seq, public.communication_channels_id_seq,
  public.distributed_messages_id_seq, public.message_dead_letters_id_seq from public, anon, authenticated;
grant usage on sequence public.distributed_locks_token_seq to service_role;

-- agent_runtime declared schema, part 80: wake-ups, compact hints coalesced per statement and
-- channel, delivered after commit by pg_notify ('agent_runtime') and realtime.send (Supabase
-- Realtime's broadcast from the database; a stand-in on plain Postgres). They are hints: the cursor
-- and claim functions decide what a consumer gets. A broadcast wake-up carries the new messages
-- themselves when they are few (at most 16), small (under 6000 bytes of JSON) and visible now.
-- Owns: notify, on_messages_inserted, on_messages_ready, on_presence_changed, on_lock_released and
-- their triggers.

-- notify(p_topic, p_event, p_payload) -> void: one wake-up, by pg_notify on 'agent_runtime' and by
-- realtime.send (private topic). Raises nothing (realtime.send swallows its errors).
create function agent_runtime_private.notify(p_topic text, p_event text, p_payload jsonb) returns void
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
create function agent_runtime_private.on_messages_inserted() returns trigger
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
create trigger distributed_messages_notify after insert on public.distributed_messages
  referencing new table as new_rows for each statement
  execute function agent_runtime_private.on_messages_inserted();
revoke all on function agent_runtime_private.on_messages_inserted() from public, anon, authenticated, service_role;

-- A nack with no delay or a replay makes messages visible again: wake consumers.
-- Raises: nothing of its own.
create function agent_runtime_private.on_messages_ready() returns trigger
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
create trigger distributed_messages_ready_notify after update on public.distributed_messages
  referencing new table as new_rows old table as old_rows for each statement
  execute function agent_runtime_private.on_messages_ready();
revoke all on function agent_runtime_private.on_messages_ready() from public, anon, authenticated, service_role;

-- on_presence_changed() trigger: a join, leave or status change (not a plain heartbeat) notifies
-- 'presence'.
-- Raises: nothing of its own.
create function agent_runtime_private.on_presence_changed() returns trigger
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
create trigger agent_presence_notify after insert or update of status on public.agent_presence
  for each row execute function agent_runtime_private.on_presence_changed();
revoke all on function agent_runtime_private.on_presence_changed() from public, anon, authenticated, service_role;

-- on_lock_released() trigger: a deleted lease notifies 'locks' (waiters try again at once).
-- Raises: nothing of its own.
create function agent_runtime_private.on_lock_released() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform agent_runtime_private.notify('locks', 'released', jsonb_build_object('k', old.key));
  return null;
end
$$;
create trigger distributed_locks_notify after delete on public.distributed_locks
  for each row execute function agent_runtime_private.on_lock_released();
revoke all on function agent_runtime_private.on_lock_released() from public, anon, authenticated, service_role;

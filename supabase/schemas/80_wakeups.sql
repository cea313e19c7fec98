-- agent_runtime declared schema, part 80: wake-ups, compact hints (one per send, or per statement,
-- and channel), delivered after commit by pg_notify on the topic's own notification channel (the
-- Postgres transport LISTENs to the topics it watches, and hears no other) and, on Supabase, by
-- realtime.send (Realtime's broadcast from the database); wakeup_routes says which. They are
-- hints: the cursor and claim functions decide what a consumer gets. A broadcast wake-up carries
-- the new messages themselves when they are few (at most 16), small (under 6000 bytes of JSON)
-- and visible now. Carried messages are signed (HMAC-SHA256 with a secret only the owner reads),
-- so a forged notification can at worst wake an agent, never deliver a message or move a cursor.
-- Owns: wakeup_secret, wakeup_mac, wakeup_key, wakeup_routes, topic_channel, notify, notify_sent
-- (send_messages' wake-up), on_messages_ready, on_presence_changed, on_lock_released and their
-- triggers.

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

-- HMAC-SHA256 of p_text (UTF-8) with the wake-up secret, hex. PL/pgSQL, not SQL: a SQL function
-- with a pinned search_path is never inlined, and was parsed and planned again in every
-- transaction (32 us of each send's wake-up; as PL/pgSQL the plan is kept for the session: 9 us).
create function agent_runtime_private.wakeup_mac(p_text text) returns text
language plpgsql stable set search_path = '' as $$
begin
  return (select pg_catalog.encode(pg_catalog.sha256(s.outer_pad || pg_catalog.sha256(s.inner_pad || pg_catalog.convert_to(p_text, 'UTF8'))), 'hex')
          from agent_runtime_private.wakeup_secret s);
end
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

-- ---------------------------------------------------------------------------------------------
-- Where wake-ups go
-- ---------------------------------------------------------------------------------------------
-- Each topic has its own notification channel, so that a wake-up reaches only the connections
-- listening to its topic (one shared channel made every listener receive and decode every
-- wake-up). Channel names are identifiers (at most 63 bytes) and topics are not bounded, so the
-- channel is a fixed-length digest of the topic: 'agent_runtime:' and the first 32 hex digits of
-- the SHA-256 of the topic (UTF-8). agent_runtime/transports/wire.py (notification_channel)
-- computes the same; a test keeps the two equal. PL/pgSQL for the reason wakeup_mac is (as SQL it
-- cost every wake-up 12 us of parsing and planning; now 2 us).
create function agent_runtime_private.topic_channel(p_topic text) returns text
language plpgsql immutable parallel safe set search_path = '' as $$
begin
  return 'agent_runtime:' || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_topic, 'UTF8')), 'hex'), 32);
end
$$;
revoke all on function agent_runtime_private.topic_channel(text) from public, anon, authenticated, service_role;

-- Which ways wake-ups are sent, decided by the platform, not by any session: a table only the
-- owner writes (a session can set any GUC it likes). notify: pg_notify on the topic's channel,
-- for runtimes on the Postgres transport. realtime: realtime.send, for Supabase Realtime's
-- subscribers (the Supabase transport); on plain Postgres nobody hears the bootstrap's stand-in
-- for it unless a stand-in for Realtime runs (agent_runtime.testing.SupabaseStandIn turns it on),
-- and each call is a subtransaction, so it is off there. On Supabase both are on: runtimes may
-- also connect to its database directly (postgresql://), and they LISTEN. An operator may change
-- either (as the owner: update agent_runtime_private.wakeup_routes set ...).
create table agent_runtime_private.wakeup_routes (
  id       boolean primary key default true check (id),  -- one row
  notify   boolean not null,
  realtime boolean not null
);
revoke all on table agent_runtime_private.wakeup_routes from public, anon, authenticated, service_role;
insert into agent_runtime_private.wakeup_routes (notify, realtime)
values (true, exists (select 1 from pg_catalog.pg_roles where rolname = 'supabase_admin'));

-- notify(p_topic, p_event, p_payload) -> void: one wake-up, the ways wakeup_routes says: pg_notify
-- on the topic's channel (with the topic in 't' and the event in 'e'), realtime.send (private
-- topic). Raises nothing (realtime.send swallows its errors).
create function agent_runtime_private.notify(p_topic text, p_event text, p_payload jsonb) returns void
language plpgsql set search_path = '' as $$
declare
  v_notify boolean;
  v_realtime boolean;
begin
  select w.notify, w.realtime into v_notify, v_realtime from agent_runtime_private.wakeup_routes w;
  if v_notify is not false then  -- (no row: notify, the plain-Postgres way)
    perform pg_catalog.pg_notify(agent_runtime_private.topic_channel(p_topic),
                                 (p_payload || jsonb_build_object('t', p_topic, 'e', p_event))::text);
  end if;
  if v_realtime then
    -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
    -- realtime.messages). realtime.send never raises.
    perform realtime.send(p_payload, p_event, p_topic, true);
  end if;
end
$$;
revoke all on function agent_runtime_private.notify(text, text, jsonb) from public, anon, authenticated, service_role;

-- notify_sent(p_channel, p_kind, p_seq, p_messages) -> void: the wake-up for the messages
-- send_messages has just inserted into channel p_channel (of kind p_kind), the last of them at seq
-- p_seq; delivered after commit. p_messages: those messages, in seq order, when send_messages found
-- that the wake-up may carry them (a broadcast channel's, or replies to an inbox, which the requester
-- delivers from their wake-up and acks without claiming them, see ack_messages; at most 16, under
-- 6000 bytes of payload, visible now), else null. It carries them when their JSON is under 6000
-- bytes too; otherwise, and on queues (where carrying a message cannot claim it), it is the bare
-- hint {c, s}. send_messages calls it, not a trigger on distributed_messages: it is the only writer
-- of new messages, and it has the batch in hand (the statement trigger this replaces, with its
-- transition table, grouping, second scan for the JSON and routes query, was a fifth of the server
-- CPU of sending one message).
-- Raises: nothing of its own.
create function agent_runtime_private.notify_sent(p_channel text, p_kind text, p_seq bigint,
                                                  p_messages public.distributed_messages[]) returns void
language plpgsql set search_path = '' as $$
declare
  v_topic text := case when p_kind = 'direct' then p_channel else 'channel:' || p_channel end;
  v_messages text;
  v_note text;
  v_notify boolean;
  v_realtime boolean;
begin
  if p_messages is not null then
    v_messages := agent_runtime_private.messages_json(p_messages, p_channel,
                                                      pg_catalog.array_fill(1, array[pg_catalog.cardinality(p_messages)]))::text;
    if octet_length(v_messages) < 6000 then  -- (headers count too)
      v_note := json_build_object(
        'c', p_channel, 's', p_seq, 'f', p_messages[1].seq, 'm', v_messages,
        'h', agent_runtime_private.wakeup_mac(v_topic || E'\n' || p_channel || E'\n' || p_messages[1].seq || E'\n' || v_messages)
      )::text;
      if octet_length(v_note) >= 7200 then
        v_note := null;  -- (quoting the messages as a string made it too big for pg_notify)
      end if;
    end if;
  end if;
  if v_note is null then
    v_note := json_build_object('c', p_channel, 's', p_seq)::text;
  end if;
  select w.notify, w.realtime into v_notify, v_realtime from agent_runtime_private.wakeup_routes w;
  if v_notify is not false then  -- (no row: notify, the plain-Postgres way)
    perform pg_catalog.pg_notify(agent_runtime_private.topic_channel(v_topic),
                                 left(v_note, -1) || ',"t":' || to_json(v_topic)::text || ',"e":"message"}');
  end if;
  if v_realtime then
    -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
    -- realtime.messages: only the channel's subscribers hear it). realtime.send never raises.
    perform realtime.send(v_note::jsonb, 'message', v_topic, true);
  end if;
end
$$;
revoke all on function agent_runtime_private.notify_sent(text, text, bigint, public.distributed_messages[]) from public, anon, authenticated, service_role;

-- A nack, a hand-back or a replay makes a message ready again: wake its consumers. A row trigger
-- with a WHEN clause on the state column: claims, acks and visibility extensions never run it
-- (a statement trigger with transition tables ran, and captured every updated row, on all of them).
-- A replay of many messages sends one wake-up per message (pg_notify folds identical ones).
-- Raises: nothing of its own.
create function agent_runtime_private.on_messages_ready() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_name text;
  v_kind text;
begin
  select c.name, c.kind into v_name, v_kind from public.communication_channels c where c.id = new.channel_id;
  perform agent_runtime_private.notify(
    case when v_kind = 'direct' then v_name else 'channel:' || v_name end,
    'message', jsonb_build_object('c', v_name, 's', new.seq));
  return null;
end
$$;
create trigger distributed_messages_ready_notify after update of state on public.distributed_messages
  for each row when (new.state = 'ready' and old.state <> 'ready')
  execute function agent_runtime_private.on_messages_ready();
revoke all on function agent_runtime_private.on_messages_ready() from public, anon, authenticated, service_role;

-- on_presence_changed() trigger: a join, leave or status change (not a plain heartbeat) notifies
-- 'presence', signed: 'at' (the database clock in microseconds since the epoch) and 'h', the HMAC
-- of "presence\n<agent id>\n<kind>\n<status>\n<at>" with the wake-up secret. Any login can
-- NOTIFY, and LISTEN: a runtime holding the key believes only a change that verifies and is newer
-- than the last it believed for that agent (neither forged nor replayed).
-- Raises: nothing of its own.
create function agent_runtime_private.on_presence_changed() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_event text;
  v_at bigint;
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
  v_at := (extract(epoch from agent_runtime_private.clock()) * 1000000)::bigint;
  perform agent_runtime_private.notify('presence', 'presence',
    jsonb_build_object('a', new.agent_id, 'k', v_event, 'st', new.status, 'at', v_at,
                       'h', agent_runtime_private.wakeup_mac(
                              'presence' || E'\n' || new.agent_id || E'\n' || v_event || E'\n' || new.status
                              || E'\n' || v_at)));
  return null;
end
$$;
create trigger agent_presence_notify after insert or update of status on public.agent_presence
  for each row execute function agent_runtime_private.on_presence_changed();
revoke all on function agent_runtime_private.on_presence_changed() from public, anon, authenticated, service_role;

-- on_lock_released() trigger: a deleted lease notifies 'locks' (waiters try again at once),
-- except the one release_lock is deleting: it sends that hint itself, only when no acquire is
-- queued in the database for the key (see release_lock). (Any session can set the setting; it
-- only drops the hints of its own transaction's deletes, which waiters' timers stand in for.)
-- Raises: nothing of its own.
create function agent_runtime_private.on_lock_released() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  if pg_catalog.current_setting('agent_runtime.releasing_lock', true) is distinct from old.key then
    perform agent_runtime_private.notify('locks', 'released', jsonb_build_object('k', old.key));
  end if;
  return null;
end
$$;
create trigger distributed_locks_notify after delete on public.distributed_locks
  for each row execute function agent_runtime_private.on_lock_released();
revoke all on function agent_runtime_private.on_lock_released() from public, anon, authenticated, service_role;

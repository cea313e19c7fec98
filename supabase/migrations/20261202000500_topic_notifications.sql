-- Wake-ups that reach only the connections they concern (issue 13).
-- * Each topic has its own notification channel (topic_channel: a digest of the topic, as
--   pg_notify channels are identifiers of at most 63 bytes), in place of the one shared
--   'agent_runtime' channel every listener received and decoded every wake-up on. The Postgres
--   transport LISTENs to the channels of the topics it watches.
-- * wakeup_routes (owner-only) says which ways wake-ups are sent: pg_notify on the topic's
--   channel, realtime.send, or both. On plain Postgres realtime.send is off (nobody hears the
--   bootstrap's, and each call is a subtransaction); on Supabase both are on.

-- ---------------------------------------------------------------------------------------------
-- Where wake-ups go
-- ---------------------------------------------------------------------------------------------
-- Each topic has its own notification channel, so that a wake-up reaches only the connections
-- listening to its topic (one shared channel made every listener receive and decode every
-- wake-up). Channel names are identifiers (at most 63 bytes) and topics are not bounded, so the
-- channel is a fixed-length digest of the topic: 'agent_runtime:' and the first 32 hex digits of
-- the SHA-256 of the topic (UTF-8). agent_runtime/transports/wire.py (notification_channel)
-- computes the same; a test keeps the two equal.
create function agent_runtime_private.topic_channel(p_topic text) returns text
language sql immutable parallel safe set search_path = '' as $$
  select 'agent_runtime:' || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_topic, 'UTF8')), 'hex'), 32)
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
create or replace function agent_runtime_private.notify(p_topic text, p_event text, p_payload jsonb) returns void
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

-- New messages: one wake-up per statement and channel, delivered after commit. On a broadcast
-- channel, and on an inbox for replies (a batch of replies only: the requester delivers a reply
-- from its wake-up and acks it without claiming it, see ack_messages), it carries the messages
-- themselves when they are few, small and visible now (see the top of this file); otherwise, and
-- on queues (where carrying a message cannot claim it), it is the bare hint {c, s}.
-- Raises: nothing of its own.
create or replace function agent_runtime_private.on_messages_inserted() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  r record;
  v_topic text;
  v_messages text;
  v_note text;
  v_notify boolean;
  v_realtime boolean;
begin
  select w.notify, w.realtime into v_notify, v_realtime from agent_runtime_private.wakeup_routes w;
  for r in
    select c.id, c.name, c.kind, min(n.seq) as first_seq, max(n.seq) as seq, count(*) as n,
           bool_and(n.visible_at <= (select agent_runtime_private.clock())) as visible, sum(n.size_bytes) as payload_bytes,
           bool_and(n.reply_to is null and n.correlation_id is not null) as replies
    from new_rows n join public.communication_channels c on c.id = n.channel_id
    group by c.id, c.name, c.kind
  loop
    v_topic := case when r.kind = 'direct' then r.name else 'channel:' || r.name end;
    v_note := null;
    if (r.kind = 'broadcast' or (r.kind = 'direct' and r.replies)) and r.visible and r.n <= 16 and r.seq - r.first_seq + 1 = r.n
       and r.payload_bytes < 6000 then
      select agent_runtime_private.messages_json(array_agg(n::public.distributed_messages order by n.seq), r.name,
                                                 array_agg(1 order by n.seq))::text
      into v_messages
      from new_rows n where n.channel_id = r.id;
      if octet_length(v_messages) < 6000 then  -- (headers count too)
        v_note := json_build_object(
          'c', r.name, 's', r.seq, 'f', r.first_seq, 'm', v_messages,
          'h', agent_runtime_private.wakeup_mac(v_topic || E'\n' || r.name || E'\n' || r.first_seq || E'\n' || v_messages)
        )::text;
        if octet_length(v_note) >= 7200 then
          v_note := null;  -- (quoting the messages as a string made it too big for pg_notify)
        end if;
      end if;
    end if;
    if v_note is null then
      v_note := json_build_object('c', r.name, 's', r.seq)::text;
    end if;
    if v_notify is not false then
      perform pg_catalog.pg_notify(agent_runtime_private.topic_channel(v_topic),
                                   left(v_note, -1) || ',"t":' || to_json(v_topic)::text || ',"e":"message"}');
    end if;
    if v_realtime then
      -- Supabase Realtime broadcast from the database (private topic, authorised by RLS on
      -- realtime.messages: only the channel's subscribers hear it). realtime.send never raises.
      perform realtime.send(v_note::jsonb, 'message', v_topic, true);
    end if;
  end loop;
  return null;
end
$$;
revoke all on function agent_runtime_private.on_messages_inserted() from public, anon, authenticated, service_role;

-- Queue fast paths (issue 13): a claim costs the same at any depth, and claims and acks do no
-- trigger work when nothing needs waking.
-- * claim_messages no longer sweeps the channel's in-flight messages for spent timed-out claims
--   before every claim (a scan as long as the queue); its own picked scan sends the spent ones it
--   meets to the dead letters and goes on past them.
-- * claim_messages and ack_messages plan their look-ups as ordered index scans whatever the table's
--   statistics say (a queue filled faster than autovacuum analyses it was planned as a bitmap scan
--   of the whole channel, sorted: a claim as long as the queue).
-- * on_messages_ready becomes a row trigger on UPDATE OF state WHEN the row becomes ready: claims,
--   acks and extend_visibility no longer run a statement trigger with transition tables.

drop function public.claim_messages(text, text, integer, bigint, bigint[], text[]);
-- Queue and inbox: claims up to p_limit visible messages in seq order for p_visibility_ms.
-- A claimed message whose visibility timed out is claimable again; one that has used up its
-- attempts goes to the dead letters instead, when a claim's own scan meets it (it would have been
-- claimed next): no claim scans the channel for them, so a claim costs the same at any depth.
-- SKIP LOCKED: concurrent consumers never get the same message and never wait on each other.
-- p_ack_ids (optional): acknowledge these first, in the same transaction, as fetch_messages does.
-- Raises: AR400 invalid input; AR403 not allowed; AR404 unknown agent; AR405 unknown channel or not subscribed; AR412 channel kind mismatch.
create function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
                                      p_visibility_ms bigint default null, p_ack_ids bigint[] default null,
                                      p_classes text[] default null)
returns json
language plpgsql security definer set search_path = '' set enable_seqscan = off set enable_bitmapscan = off as $$
declare
  v_channel public.communication_channels;
  v_visibility interval;
  v_result json;
  v_claimed integer;
  v_dead integer;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'AR400';
  end if;
  if p_classes is not null and (cardinality(p_classes) = 0 or array_position(p_classes, null) is not null
                                or not p_classes <@ array['request', 'reply', 'plain']) then
    raise exception 'classes must be some of request, reply, plain' using errcode = 'AR400';
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  if p_ack_ids is not null then
    perform public.ack_messages(p_agent_id, p_ack_ids, p_channel);
  end if;
  if v_channel.kind = 'broadcast' then
    raise exception 'channel % is a broadcast channel: fetch its messages', p_channel using errcode = 'AR412';
  end if;
  if v_channel.kind = 'direct' and v_channel.owner_id <> p_agent_id then
    raise exception 'only agent % may consume its inbox', v_channel.owner_id using errcode = 'AR403';
  end if;
  v_visibility := coalesce(agent_runtime_private.ms(p_visibility_ms, 'visibility timeout', 100, 43200000),
                           v_channel.visibility_timeout);

  -- One scan of the claim index in seq order (ready and in-flight rows only). A timed-out claim
  -- that used up its attempts dies where the scan meets it, and the claim goes on past it.
  loop
    with picked as (
      select m.id, (m.state = 'inflight' and m.attempts >= v_channel.max_attempts) as spent
      from public.distributed_messages m
      where m.channel_id = v_channel.id and m.state in ('ready', 'inflight') and m.visible_at <= clock_timestamp()
        and (m.expires_at is null or m.expires_at > clock_timestamp())
        and (p_classes is null
             or (m.reply_to is not null and 'request' = any (p_classes))
             or (m.reply_to is null and m.correlation_id is not null and 'reply' = any (p_classes))
             or (m.reply_to is null and m.correlation_id is null and 'plain' = any (p_classes)))
      order by m.seq
      limit p_limit
      for update skip locked
    ), died as (
      update public.distributed_messages m set state = 'dead',
                                               last_error = coalesce(m.last_error, 'visibility timeout'),
                                               claimed_by = null
      from picked where m.id = picked.id and picked.spent
      returning m.id
    ), claimed as (
      update public.distributed_messages m set state = 'inflight', attempts = m.attempts + 1,
                                               claimed_by = p_agent_id, visible_at = clock_timestamp() + v_visibility
      from picked where m.id = picked.id and not picked.spent
      returning m as msg, m.seq as seq, m.attempts as attempts
    )
    select agent_runtime_private.messages_json(array_agg(c.msg order by c.seq), v_channel.name,
                                               array_agg(c.attempts order by c.seq)),
           count(*), (select count(*) from died)
    into v_result, v_claimed, v_dead from claimed c;
    -- (a batch that lost rows to the dead letters looks further, so a full batch still means: maybe more)
    exit when v_dead = 0 or v_claimed > 0;
  end loop;
  return coalesce(v_result, '[]'::json);
end
$$;
revoke all on function public.claim_messages(text, text, integer, bigint, bigint[], text[]) from public, anon, authenticated;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[], text[]) to authenticated, service_role;

alter function public.ack_messages(text, bigint[], text) set enable_bitmapscan = off;

drop trigger distributed_messages_ready_notify on public.distributed_messages;
drop function agent_runtime_private.on_messages_ready();
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

-- An inbox holds three classes of message: requests (they name a reply_to), replies (a
-- correlation id and no reply_to) and plain direct messages (neither). claim_messages gains
-- p_classes (new, optional): claim only messages of these classes. The runtime claims requests
-- and replies on its own, and plain messages only while the application reads its inbox, so a
-- thousand unread messages never stand in front of a reply; when its request handlers are busy it
-- claims replies only, and the requests wait in the table. null claims every class, as before.
-- Otherwise claim_messages is what 20261202000100_fencing_and_wakeups.sql made it (clocks read at
-- the decision, acks tied to the channel being claimed).

drop function public.claim_messages(text, text, integer, bigint, bigint[]);

create function public.claim_messages(p_agent_id text, p_channel text, p_limit integer default 10,
                                      p_visibility_ms bigint default null, p_ack_ids bigint[] default null,
                                      p_classes text[] default null)
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

  -- Timed-out claims that used up their attempts die here, before anyone can claim them again.
  update public.distributed_messages set state = 'dead', last_error = coalesce(last_error, 'visibility timeout'),
                                         claimed_by = null
  where channel_id = v_channel.id and state = 'inflight' and visible_at <= clock_timestamp()
    and attempts >= v_channel.max_attempts;

  with picked as (
    select m.id from public.distributed_messages m
    where m.channel_id = v_channel.id and m.state in ('ready', 'inflight') and m.visible_at <= clock_timestamp()
      and (m.expires_at is null or m.expires_at > clock_timestamp())
      and (p_classes is null
           or (m.reply_to is not null and 'request' = any (p_classes))
           or (m.reply_to is null and m.correlation_id is not null and 'reply' = any (p_classes))
           or (m.reply_to is null and m.correlation_id is null and 'plain' = any (p_classes)))
    order by m.seq
    limit p_limit
    for update skip locked
  ), claimed as (
    update public.distributed_messages m set state = 'inflight', attempts = m.attempts + 1,
                                             claimed_by = p_agent_id, visible_at = clock_timestamp() + v_visibility
    from picked where m.id = picked.id
    returning m as msg, m.seq as seq, m.attempts as attempts
  )
  select agent_runtime_private.messages_json(array_agg(c.msg order by c.seq), v_channel.name,
                                             array_agg(c.attempts order by c.seq))
  into v_result from claimed c;
  return coalesce(v_result, '[]'::json);
end
$$;

revoke all on function public.claim_messages(text, text, integer, bigint, bigint[], text[])
  from public, anon, authenticated;
grant execute on function public.claim_messages(text, text, integer, bigint, bigint[], text[])
  to authenticated, service_role;

-- Request/reply in fewer round trips and commits (issue 13):
-- * reply_to_request: a responder's reply and the ack of the request it answers in one statement
--   and one transaction (the reply through send_messages, the ack as ack_messages writes it). The
--   ack no longer waits to ride along with the responder's next claim, or to take a commit of its
--   own 100 ms later when no claim comes, and a reply is never committed without its ack.

-- reply_to_request(p_agent_id, p_request_id, p_channel, p_messages) -> jsonb: a responder's answer
-- in one statement and one transaction: the reply (p_messages, sent to p_channel exactly as
-- send_messages sends them, through it) and the ack of the request p_request_id it answers, a
-- request in p_agent_id's own inbox that p_agent_id holds the claim of (as ack_messages would
-- ack it: a claim handed to someone else meanwhile is not acked). Both or neither: a reply that is
-- refused (too large, an unknown requester...) raises and leaves the request unacked, as it was.
-- A request not held (any more) is not acked and the reply is sent all the same, as before this
-- function. Returns {acked: 0 or 1, sent: send_messages' result}. (Before it, the ack rode along
-- with the responder's next claim, or took a commit of its own when no claim came within 100 ms.)
-- Raises: what send_messages raises; AR400 invalid input; AR403 not allowed.
create function public.reply_to_request(p_agent_id text, p_request_id bigint, p_channel text, p_messages jsonb)
returns jsonb
language plpgsql security definer set search_path = '' set plan_cache_mode = force_generic_plan set enable_seqscan = off set enable_bitmapscan = off as $$
declare
  v_inbox public.communication_channels;
  v_sent jsonb;
  v_acked integer := 0;
begin
  perform agent_runtime_private.assert_acting_as(p_agent_id);
  if p_request_id is null then
    raise exception 'the request id is required' using errcode = 'AR400';
  end if;
  v_sent := public.send_messages(p_agent_id, p_channel, p_messages);
  select * into v_inbox from public.communication_channels c
  where c.name = 'agent:' || p_agent_id and c.kind = 'direct' and c.owner_id = p_agent_id;
  if found then  -- (ack_claims: only this agent's claim of a message of its own inbox)
    v_acked := agent_runtime_private.ack_claims(p_agent_id, array[p_request_id], v_inbox);
  end if;
  return jsonb_build_object('acked', v_acked, 'sent', v_sent);
end
$$;
revoke all on function public.reply_to_request(text, bigint, text, jsonb) from public, anon, authenticated;
grant execute on function public.reply_to_request(text, bigint, text, jsonb) to authenticated, service_role;

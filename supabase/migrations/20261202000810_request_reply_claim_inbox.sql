-- Request/reply, continued (issue 13): claim_inbox, the caller's own inbox claimed as
-- claim_messages claims it, committing without waiting for its WAL flush when asked to
-- (p_durable => false, how the runtime claims its inbox): the responder's claim of a request no
-- longer waits for a flush on the round trip. Why a claim lost that way is harmless: see the
-- function's comment in supabase/schemas/30_messages_dead_letters.sql.

-- claim_inbox(p_agent_id, p_limit, p_visibility_ms, p_ack_ids, p_classes, p_durable) -> json: the
-- caller's own inbox claimed as claim_messages claims it (same checks, answer and acks riding
-- along; the inbox is always 'agent:' || p_agent_id). p_durable => false (how the runtime claims
-- its inbox, alone in the call's transaction): when the claim is the first write of its
-- transaction, that transaction commits without waiting for its WAL flush, so the responder's
-- claim of a request no longer waits for a flush on the request/reply round trip. A claim lost
-- that way (the server crashes before the WAL writer flushes it) is harmless: the WAL is flushed
-- in order and every later durable commit flushes it first, so a lost claim takes with it every
-- write that came after it (the reply and the ack of that request, which are durable, included:
-- a requester is only ever answered by a reply that survives, and with it its claim); the state
-- recovered is the one before the claim, a request ready with its attempts as they were, and it is
-- claimed and answered again (at-least-once; a crash of the server is no failed attempt of the
-- request). Acks riding on the claim, lost the same way, redeliver replies nobody waits for any
-- more (dropped) or inbox messages (at-least-once). No claim issues a fencing token, and sends
-- stay durable. Writes of the same transaction after the claim share its commit: a caller that
-- wants them durable keeps the default (p_durable => true).
-- Raises: what claim_messages raises.
create function public.claim_inbox(p_agent_id text, p_limit integer default 10, p_visibility_ms bigint default null,
                                   p_ack_ids bigint[] default null, p_classes text[] default null,
                                   p_durable boolean default true)
returns json
language plpgsql set search_path = '' as $$
begin
  if p_durable is false and pg_catalog.pg_current_xact_id_if_assigned() is null then
    perform pg_catalog.set_config('synchronous_commit', 'off', true);
  end if;
  return public.claim_messages(p_agent_id, 'agent:' || p_agent_id, p_limit, p_visibility_ms, p_ack_ids, p_classes);
end
$$;
revoke all on function public.claim_inbox(text, integer, bigint, bigint[], text[], boolean) from public, anon, authenticated;
grant execute on function public.claim_inbox(text, integer, bigint, bigint[], text[], boolean) to authenticated, service_role;

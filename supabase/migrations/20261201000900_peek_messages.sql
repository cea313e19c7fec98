-- peek_messages: read a channel's messages by seq without consuming them: no cursor moves, nothing
-- is claimed or acked (the CLI's `tail` follows a broadcast or queue channel with it). Trusted
-- callers only (a direct login or the service role), since it shows every payload of the channel.
-- Sequence order is commit order (seq is taken under the channel row's lock), so a reader that
-- asks for seq > its last one never skips a message that committed late.
create or replace function public.peek_messages(p_channel text, p_after_seq bigint default 0,
                                                p_limit integer default 100)
returns json
language plpgsql stable security definer set search_path = '' as $$
declare
  v_channel public.communication_channels;
  v_result json;
begin
  if not agent_runtime_private.is_trusted() then
    raise exception 'reading a channel without consuming it needs a trusted connection' using errcode = 'AR403',
      hint = 'use the service role key or a direct database login';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'AR400';
  end if;
  v_channel := agent_runtime_private.channel(p_channel);
  select coalesce(json_agg(json_build_object(
           'id', m.id, 'channel', v_channel.name, 'seq', m.seq, 'sender_id', m.sender_id, 'payload', m.payload,
           'headers', m.headers, 'size_bytes', m.size_bytes, 'correlation_id', m.correlation_id,
           'reply_to', m.reply_to, 'idempotency_key', m.idempotency_key, 'created_at', m.created_at,
           'expires_at', m.expires_at, 'attempts', m.attempts) order by m.seq), '[]'::json)
    into v_result
    from (select * from public.distributed_messages d
           where d.channel_id = v_channel.id and d.seq > coalesce(p_after_seq, 0)
           order by d.seq limit p_limit) m;
  return v_result;
end
$$;

revoke all on function public.peek_messages(text, bigint, integer) from public, anon, authenticated;
grant execute on function public.peek_messages(text, bigint, integer) to service_role;

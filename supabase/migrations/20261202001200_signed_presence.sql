-- Signed presence wake-ups: a join, leave or status change carries the database clock ('at') and
-- an HMAC ('h') with the wake-up secret, so that a runtime holding the key believes neither a
-- forged presence change (any login can NOTIFY) nor a replayed one (any login can LISTEN).

-- on_presence_changed() trigger: a join, leave or status change (not a plain heartbeat) notifies
-- 'presence', signed: 'at' (the database clock in microseconds since the epoch) and 'h', the HMAC
-- of "presence\n<agent id>\n<kind>\n<status>\n<at>" with the wake-up secret. Any login can
-- NOTIFY, and LISTEN: a runtime holding the key believes only a change that verifies and is newer
-- than the last it believed for that agent (neither forged nor replayed).
-- Raises: nothing of its own.
create or replace function agent_runtime_private.on_presence_changed() returns trigger
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
revoke all on function agent_runtime_private.on_presence_changed() from public, anon, authenticated, service_role;

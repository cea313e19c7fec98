-- agent_runtime declared schema, part 90: row level security, policies and grants.
-- Writes go through the functions (security definer, which check who acts). Direct table access is
-- read-only and limited to what an agent may see.
-- Owns: RLS on every table, the tables' policies, the policies on realtime.messages (private
-- Realtime topics), every grant.

alter table public.distributed_agents enable row level security;
alter table public.agent_presence enable row level security;
alter table public.communication_channels enable row level security;
alter table public.channel_subscriptions enable row level security;
alter table public.distributed_messages enable row level security;
alter table public.message_dead_letters enable row level security;
alter table public.distributed_locks enable row level security;
alter table public.communication_metrics enable row level security;


create policy agents_read on public.distributed_agents for select to authenticated using (true);
create policy presence_read on public.agent_presence for select to authenticated using (true);
create policy channels_read on public.communication_channels for select to authenticated
  using (kind <> 'direct' or owner_id = (select agent_runtime_private.jwt_agent_id()));
create policy subscriptions_read_own on public.channel_subscriptions for select to authenticated
  using (agent_id = (select agent_runtime_private.jwt_agent_id()));
create policy messages_read_own_channels on public.distributed_messages for select to authenticated
  using (exists (
    select 1 from public.communication_channels c
    where c.id = channel_id and (c.owner_id = (select agent_runtime_private.jwt_agent_id())
      or exists (select 1 from public.channel_subscriptions s
                 where s.channel_id = c.id and s.agent_id = (select agent_runtime_private.jwt_agent_id())))));
create policy dead_letters_read_own on public.message_dead_letters for select to authenticated
  using (agent_id = (select agent_runtime_private.jwt_agent_id()));
create policy locks_read on public.distributed_locks for select to authenticated using (true);
create policy metrics_read_own on public.communication_metrics for select to authenticated
  using (agent_id = (select agent_runtime_private.jwt_agent_id()));

-- Private Realtime topics: an agent reads its own inbox topic, the topics of channels it is
-- subscribed to, and presence; it may publish only on its own topic and presence.
create policy agent_runtime_topics_read on realtime.messages for select to authenticated
  using (
    (select realtime.topic()) = 'agent:' || (select agent_runtime_private.jwt_agent_id())
    or (select realtime.topic()) in ('presence', 'locks')
    or exists (
      select 1 from public.channel_subscriptions s join public.communication_channels c on c.id = s.channel_id
      where 'channel:' || c.name = (select realtime.topic())
        and s.agent_id = (select agent_runtime_private.jwt_agent_id())));
create policy agent_runtime_topics_write on realtime.messages for insert to authenticated
  with check (
    (select realtime.topic()) = 'agent:' || (select agent_runtime_private.jwt_agent_id())
    or ((select realtime.topic()) = 'presence' and extension = 'presence'));

grant usage on schema public to anon, authenticated, service_role;
grant usage on schema agent_runtime_private to authenticated, service_role;
grant execute on all functions in schema agent_runtime_private to authenticated, service_role;
grant select on public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to authenticated;
grant all on public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to service_role;
grant usage on sequence public.distributed_locks_token_seq to service_role;

-- Our functions are callable by signed-in agents and the service role, never anonymously.
-- (Only ours: other functions in the project's public schema are left as they are.)
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'public'::regnamespace and p.proname = any (array[
      'register_agent', 'update_agent_last_seen', 'set_agent_status', 'deregister_agent',
      'list_agents', 'ensure_channel', 'list_channels', 'subscribe_channel', 'unsubscribe_channel',
      'send_messages', 'send_message', 'fetch_messages', 'claim_messages', 'ack_messages',
      'nack_message', 'extend_visibility', 'list_dead_letters', 'replay_dead_letters',
      'acquire_lock', 'renew_lock', 'release_lock', 'check_fencing_token', 'list_locks',
      'record_communication_metrics', 'get_communication_metrics', 'cleanup_expired_messages',
      'cleanup_expired_locks', 'cleanup_stale_presence', 'cleanup_old_metrics', 'run_cleanup',
      'get_network_topology'])
  loop
    execute format('revoke execute on function %s from public, anon', f);
    execute format('grant execute on function %s to authenticated, service_role', f);
  end loop;
end
$$;

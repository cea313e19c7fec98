-- agent_runtime declared schema, part 90: row level security, the policies, and the grants on the
-- schemas, tables and sequences (each function's grant is beside its definition).
--
-- Writes go through the functions (security definer, which check who acts). Direct table access is
-- read-only, for 'authenticated' agents, and limited by RLS to what an agent may see; anon holds
-- nothing. Every grant is preceded by a revoke from public, anon and authenticated, so the result
-- is the same whatever default privileges the database has (Supabase's give anon and
-- authenticated everything created in public, TRUNCATE and sequence rights included, and RLS does
-- not apply to TRUNCATE). The policies read the agent's id from the JWT with auth.jwt() (Supabase's
-- own; the bootstrap provides it on plain Postgres), so a caller needs nothing in
-- agent_runtime_private.
--
-- Owns: RLS on every table; the tables' policies; the policies on realtime.messages (private
-- Realtime topics); the grants on schemas, tables and sequences.

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
  using (kind <> 'direct' or owner_id = (select auth.jwt() ->> 'agent_id'));
create policy subscriptions_read_own on public.channel_subscriptions for select to authenticated
  using (agent_id = (select auth.jwt() ->> 'agent_id'));
create policy messages_read_own_channels on public.distributed_messages for select to authenticated
  using (exists (
    select 1 from public.communication_channels c
    where c.id = channel_id and (c.owner_id = (select auth.jwt() ->> 'agent_id')
      or exists (select 1 from public.channel_subscriptions s
                 where s.channel_id = c.id and s.agent_id = (select auth.jwt() ->> 'agent_id')))));
create policy dead_letters_read_own on public.message_dead_letters for select to authenticated
  using (agent_id = (select auth.jwt() ->> 'agent_id'));
create policy locks_read on public.distributed_locks for select to authenticated using (true);
create policy metrics_read_own on public.communication_metrics for select to authenticated
  using (agent_id = (select auth.jwt() ->> 'agent_id'));

-- Private Realtime topics: an agent reads its own inbox topic, the topics of channels it is
-- subscribed to, and presence; it may publish only on its own topic and presence.
create policy agent_runtime_topics_read on realtime.messages for select to authenticated
  using (
    (select realtime.topic()) = 'agent:' || (select auth.jwt() ->> 'agent_id')
    or (select realtime.topic()) in ('presence', 'locks')
    or exists (
      select 1 from public.channel_subscriptions s join public.communication_channels c on c.id = s.channel_id
      where 'channel:' || c.name = (select realtime.topic())
        and s.agent_id = (select auth.jwt() ->> 'agent_id')));
create policy agent_runtime_topics_write on realtime.messages for insert to authenticated
  with check (
    (select realtime.topic()) = 'agent:' || (select auth.jwt() ->> 'agent_id')
    or ((select realtime.topic()) = 'presence' and extension = 'presence'));

grant usage on schema public to anon, authenticated, service_role;

revoke all on table public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics from public, anon, authenticated;
grant select on table public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to authenticated;
grant all on table public.distributed_agents, public.agent_presence, public.communication_channels,
  public.channel_subscriptions, public.distributed_messages, public.message_dead_letters,
  public.distributed_locks, public.communication_metrics to service_role;

-- setval on the token sequence would reset fencing tokens: only the owner and the service role.
revoke all on sequence public.distributed_locks_token_seq, public.communication_channels_id_seq,
  public.distributed_messages_id_seq, public.message_dead_letters_id_seq from public, anon, authenticated;
grant usage on sequence public.distributed_locks_token_seq to service_role;

-- Revoke what lets any login emit the runtime's wake-ups, where this migration may: pg_notify and
-- the plain-Postgres bootstrap's realtime.send are executable by PUBLIC; only their owner (or a
-- superuser) can change that, so elsewhere (Supabase: both belong to other roles) this is skipped.
-- The triggers run as the schema's owner and keep using both. Plain NOTIFY cannot be revoked at
-- all: to an untrusted login it means at worst a spurious wake-up, never a message (see above).
do $$
declare
  v_super boolean := coalesce((select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user), false);
  v_send regprocedure := to_regprocedure('realtime.send(jsonb,text,text,boolean)');
begin
  if v_super or pg_catalog.pg_has_role(current_user, (select p.proowner from pg_catalog.pg_proc p
                                                       where p.oid = 'pg_catalog.pg_notify(text,text)'::regprocedure),
                                       'USAGE') then
    revoke execute on function pg_catalog.pg_notify(text, text) from public;
    grant execute on function pg_catalog.pg_notify(text, text) to service_role;
  end if;
  if v_send is not null and (v_super or pg_catalog.pg_has_role(current_user, (select p.proowner from pg_catalog.pg_proc p
                                                                              where p.oid = v_send), 'USAGE')) then
    execute format('revoke execute on function %s from public, anon, authenticated', v_send);
    execute format('grant execute on function %s to service_role', v_send);
  end if;
end
$$;

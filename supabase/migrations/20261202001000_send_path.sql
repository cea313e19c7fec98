-- The send path (issue 13): what a send costs in the server, and a wake-up on the wire.
-- * wakeup_mac and topic_channel are PL/pgSQL: as SQL functions with a pinned search_path they are
--   never inlined, and were parsed and planned again in every transaction that sent a wake-up
--   (32 us and 12 us of each send; now 9 us and 2 us).

create or replace function agent_runtime_private.wakeup_mac(p_text text) returns text
language plpgsql stable set search_path = '' as $$
begin
  return (select pg_catalog.encode(pg_catalog.sha256(s.outer_pad || pg_catalog.sha256(s.inner_pad || pg_catalog.convert_to(p_text, 'UTF8'))), 'hex')
          from agent_runtime_private.wakeup_secret s);
end
$$;
revoke all on function agent_runtime_private.wakeup_mac(text) from public, anon, authenticated, service_role;

create or replace function agent_runtime_private.topic_channel(p_topic text) returns text
language plpgsql immutable parallel safe set search_path = '' as $$
begin
  return 'agent_runtime:' || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_topic, 'UTF8')), 'hex'), 32);
end
$$;
revoke all on function agent_runtime_private.topic_channel(text) from public, anon, authenticated, service_role;

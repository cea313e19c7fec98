"""Security: RLS on every table, grants, and an agent's own JWT acting only as that agent
(assert_acting_as in every function, RLS for direct reads, Realtime topic policies)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tests.sql._helpers import TABLES, Json, acting_as, call, expect_error, register, send

FUNCTIONS = (
    "register_agent", "update_agent_last_seen", "set_agent_status", "deregister_agent", "list_agents",
    "ensure_channel", "list_channels", "subscribe_channel", "unsubscribe_channel", "send_messages",
    "send_message", "fetch_messages", "claim_messages", "ack_messages", "nack_message", "extend_visibility",
    "list_dead_letters", "replay_dead_letters", "acquire_lock", "renew_lock", "release_lock",
    "check_fencing_token", "list_locks", "record_communication_metrics", "get_communication_metrics",
    "cleanup_expired_messages", "cleanup_expired_locks", "cleanup_stale_presence", "cleanup_old_metrics",
    "run_cleanup", "get_network_topology",
)

B1_LEASE = uuid.UUID("00000000-0000-0000-0000-0000000000b1")


async def _world(conn: asyncpg.Connection) -> dict[str, Any]:
    """a1 and b1 with inboxes, a shared broadcast channel, a queue, a lock, metrics and dead letters."""
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")
    for agent in ("a1", "b1"):
        await call(conn, "subscribe_channel", agent_id=agent, channel="news")
    await send(conn, "a1", "news", {"public": True})
    to_a = await send(conn, "b1", "agent:a1", {"for": "a1"})
    to_b = await send(conn, "a1", "agent:b1", {"for": "b1", "secret": 1})
    dead_b = await send(conn, "a1", "agent:b1", {"for": "b1", "secret": 2})
    await call(conn, "claim_messages", agent_id="b1", channel="agent:b1", limit=10)
    await call(conn, "nack_message", agent_id="b1", message_id=dead_b["id"], dead=True)
    await send(conn, "b1", "jobs", {"job": 1})
    await call(conn, "acquire_lock", agent_id="b1", key="b-lock", lease_id=B1_LEASE, ttl_ms=60000)
    for agent in ("a1", "b1"):
        await call(conn, "record_communication_metrics", agent_id=agent, metrics=[{"metric": "m", "count": 1}])
    return {"to_a": to_a["id"], "to_b": to_b["id"], "dead_b": dead_b["id"]}


async def test_every_table_has_rls(conn: asyncpg.Connection) -> None:
    """All eight runtime tables exist in public with row level security enabled."""
    rows = await conn.fetch(
        "select relname, relrowsecurity from pg_class where relnamespace = 'public'::regnamespace"
        " and relkind = 'r' and relname = any($1::text[])", list(TABLES))
    assert {r["relname"]: r["relrowsecurity"] for r in rows} == dict.fromkeys(TABLES, True)


MAINTENANCE = ("cleanup_expired_messages", "cleanup_expired_locks", "cleanup_stale_presence", "cleanup_old_metrics",
               "run_cleanup")


async def test_function_grants(conn: asyncpg.Connection) -> None:
    """Every operation is executable by authenticated and service_role and never by anon or public;
    maintenance by service_role only."""
    rows = await conn.fetch(
        "select p.proname, has_function_privilege('anon', p.oid, 'execute') as anon,"
        " has_function_privilege('authenticated', p.oid, 'execute') as auth,"
        " has_function_privilege('service_role', p.oid, 'execute') as service"
        " from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname = any($1::text[])",
        list(FUNCTIONS))
    assert {r["proname"] for r in rows} == set(FUNCTIONS)
    for r in rows:
        agents_may = r["proname"] not in MAINTENANCE
        assert (r["anon"], r["auth"], r["service"]) == (False, agents_may, True), r["proname"]


async def test_anon_cannot_execute(conn: asyncpg.Connection) -> None:
    """The anon role gets 42501 calling the functions, even with an agent_id claim."""
    await register(conn, "a1")
    async with acting_as(conn, "a1", role="anon"):
        await expect_error("42501", call(conn, "update_agent_last_seen", agent_id="a1"))
    async with acting_as(conn, None, role="anon"):
        await expect_error("42501", call(conn, "list_agents"))


REFUSED_AS_B1: list[tuple[str, dict[str, Any]]] = [
    ("register_agent", {"agent_id": "b1", "name": "evil"}),
    ("update_agent_last_seen", {"agent_id": "b1"}),
    ("set_agent_status", {"agent_id": "b1", "status": "busy"}),
    ("deregister_agent", {"agent_id": "b1"}),
    ("ensure_channel", {"agent_id": "b1", "name": "fresh"}),
    ("subscribe_channel", {"agent_id": "b1", "channel": "jobs"}),
    ("unsubscribe_channel", {"agent_id": "b1", "channel": "news"}),
    ("send_message", {"agent_id": "b1", "channel": "news", "payload": Json(1)}),
    ("send_messages", {"agent_id": "b1", "channel": "news", "messages": [{"payload": 1}]}),
    ("fetch_messages", {"agent_id": "b1", "channel": "news"}),
    ("claim_messages", {"agent_id": "b1", "channel": "agent:b1"}),
    ("ack_messages", {"agent_id": "b1", "message_ids": [1]}),
    ("nack_message", {"agent_id": "b1", "message_id": 1}),
    ("extend_visibility", {"agent_id": "b1", "message_ids": [1], "visibility_ms": 1000}),
    ("replay_dead_letters", {"agent_id": "b1", "message_ids": [1]}),
    ("acquire_lock", {"agent_id": "b1", "key": "x", "lease_id": uuid.uuid4(), "ttl_ms": 1000}),
    ("renew_lock", {"agent_id": "b1", "key": "b-lock", "lease_id": B1_LEASE, "ttl_ms": 1000}),
    ("release_lock", {"agent_id": "b1", "key": "b-lock", "lease_id": B1_LEASE}),
    ("record_communication_metrics", {"agent_id": "b1", "metrics": [{"metric": "m"}]}),
]


async def test_agent_token_cannot_act_as_another_agent(conn: asyncpg.Connection) -> None:
    """With a1's JWT, every operation naming b1 as the actor is refused with AR403."""
    await _world(conn)
    for fn, kwargs in REFUSED_AS_B1:
        async with acting_as(conn, "a1"):
            await expect_error("AR403", call(conn, fn, **kwargs), what=fn)
    # b1's rows are as they were.
    assert await conn.fetchval("select owner_id from distributed_locks where key = 'b-lock'") == "b1"
    assert await conn.fetchval("select status from distributed_agents where id = 'b1'") == "online"


async def test_token_without_agent_claim_is_refused(conn: asyncpg.Connection) -> None:
    """An authenticated JWT without an agent_id claim cannot act as any agent."""
    await register(conn, "a1")
    async with acting_as(conn, None):
        await expect_error("AR403", call(conn, "update_agent_last_seen", agent_id="a1"))


async def test_agent_token_acts_as_itself(conn: asyncpg.Connection) -> None:
    """With a1's JWT, a1 re-registers, heartbeats, sends, claims its inbox, uses locks and records metrics."""
    ids = await _world(conn)
    async with acting_as(conn, "a1"):
        assert (await register(conn, "a1", version="2"))["resumed"] is True
        assert (await call(conn, "update_agent_last_seen", agent_id="a1", status="busy"))["status"] == "busy"
        assert (await send(conn, "a1", "news", {"n": 2}))["seq"] == 2
        [mine] = await call(conn, "claim_messages", agent_id="a1", channel="agent:a1")
        assert mine["id"] == ids["to_a"]
        assert await call(conn, "ack_messages", agent_id="a1", message_ids=[mine["id"]]) == 1
        fetched = await call(conn, "fetch_messages", agent_id="a1", channel="news")
        assert [m["payload"] for m in fetched] == [{"public": True}, {"n": 2}]
        lease = uuid.uuid4()
        assert (await call(conn, "acquire_lock", agent_id="a1", key="a-lock", lease_id=lease, ttl_ms=5000))["acquired"]
        assert await call(conn, "release_lock", agent_id="a1", key="a-lock", lease_id=lease) is True
        assert await call(conn, "record_communication_metrics", agent_id="a1", metrics=[{"metric": "m"}]) == 1
        assert (await call(conn, "ensure_channel", agent_id="a1", name="mine"))["created_by"] == "a1"


async def test_agent_token_cannot_touch_others_messages_or_locks(conn: asyncpg.Connection) -> None:
    """Acting as itself, a1 cannot claim b1's inbox, release b1's lock, or ack, nack or replay b1's messages."""
    ids = await _world(conn)
    async with acting_as(conn, "a1"):
        await expect_error("AR403", call(conn, "claim_messages", agent_id="a1", channel="agent:b1"))
    async with acting_as(conn, "a1"):
        await expect_error("AR403", call(conn, "subscribe_channel", agent_id="a1", channel="agent:b1"))
    async with acting_as(conn, "a1"):
        assert await call(conn, "release_lock", agent_id="a1", key="b-lock", lease_id=B1_LEASE) is False
        await expect_error("AR409", call(conn, "renew_lock", agent_id="a1", key="b-lock", lease_id=B1_LEASE,
                                         ttl_ms=1000))
    async with acting_as(conn, "a1"):
        assert (await call(conn, "acquire_lock", agent_id="a1", key="b-lock", lease_id=B1_LEASE,
                           ttl_ms=1000))["acquired"] is False
        assert await call(conn, "ack_messages", agent_id="a1", message_ids=[ids["to_b"]]) == 0
        assert (await call(conn, "nack_message", agent_id="a1", message_id=ids["to_b"]))["state"] == "ignored"
        assert await call(conn, "extend_visibility", agent_id="a1", message_ids=[ids["to_b"]],
                          visibility_ms=60000) == 0
        assert await call(conn, "replay_dead_letters", agent_id="a1", message_ids=[ids["dead_b"]]) == 0
    state = await conn.fetchrow("select state, claimed_by from distributed_messages where id = $1", ids["to_b"])
    assert tuple(state) == ("inflight", "b1")
    assert await conn.fetchval("select state from distributed_messages where id = $1", ids["dead_b"]) == "dead"
    assert await conn.fetchval("select owner_id from distributed_locks where key = 'b-lock'") == "b1"


async def test_agent_token_lists_only_its_own_dead_letters(conn: asyncpg.Connection) -> None:
    """list_dead_letters with a1's JWT does not reveal b1's inbox; b1's JWT and a trusted caller see it."""
    ids = await _world(conn)
    async with acting_as(conn, "a1"):
        assert await call(conn, "list_dead_letters") == []
    async with acting_as(conn, "b1"):
        assert [m["id"] for m in await call(conn, "list_dead_letters")] == [ids["dead_b"]]
    assert [m["id"] for m in await call(conn, "list_dead_letters")] == [ids["dead_b"]]


async def test_service_role_acts_as_anyone(conn: asyncpg.Connection) -> None:
    """A service_role JWT is trusted: it may act as any agent and replay any dead letter."""
    ids = await _world(conn)
    async with acting_as(conn, None, role="service_role"):
        assert (await call(conn, "set_agent_status", agent_id="b1", status="away"))["status"] == "away"
        assert await call(conn, "replay_dead_letters", agent_id="a1", message_ids=[ids["dead_b"]]) == 1


async def test_rls_limits_direct_reads(conn: asyncpg.Connection) -> None:
    """Direct table reads with a1's JWT see only a1's inbox, subscriptions, metrics and dead letters."""
    ids = await _world(conn)
    async with acting_as(conn, "a1"):
        metrics = await conn.fetch("select agent_id from communication_metrics")
        assert [r["agent_id"] for r in metrics] == ["a1"]
        channels = {r["name"] for r in await conn.fetch("select name from communication_channels")}
        assert channels == {"agent:a1", "news", "jobs"}
        messages = {r["id"] for r in await conn.fetch("select id from distributed_messages")}
        assert ids["to_a"] in messages and ids["to_b"] not in messages and ids["dead_b"] not in messages
        assert await conn.fetchval("select count(*) from distributed_messages m join communication_channels c"
                                   " on c.id = m.channel_id where c.name = 'news'") == 1
        assert await conn.fetchval("select count(*) from distributed_messages where sender_id = 'b1'"
                                   " and payload ? 'job'") == 0  # not subscribed to the queue
        subs = {r["agent_id"] for r in await conn.fetch("select agent_id from channel_subscriptions")}
        assert subs == {"a1"}
        assert await conn.fetchval("select count(*) from message_dead_letters") == 0
        assert await conn.fetchval("select count(*) from distributed_agents") == 2
        assert await conn.fetchval("select count(*) from distributed_locks") == 1
    async with acting_as(conn, "b1"):
        assert [r["agent_id"] for r in await conn.fetch("select agent_id from communication_metrics")] == ["b1"]


async def test_agent_token_cannot_write_tables_directly(conn: asyncpg.Connection) -> None:
    """Direct writes with an agent JWT are refused (42501): changes go through the functions."""
    await _world(conn)
    for statement in (
        "insert into distributed_agents (id, name) values ('x1', 'x')",
        "update distributed_locks set owner_id = 'a1'",
        "delete from distributed_messages",
        "update communication_metrics set count = 0",
        "update agent_presence set status = 'offline'",
        "insert into channel_subscriptions (channel_id, agent_id) select id, 'a1' from communication_channels",
    ):
        async with acting_as(conn, "a1"):
            await expect_error("42501", conn.execute(statement))


async def test_realtime_topic_policies(conn: asyncpg.Connection) -> None:
    """On realtime.messages an agent may publish on its own topic and presence, not on another agent's."""
    await _world(conn)
    insert = ("insert into realtime.messages (topic, extension, payload, event, private)"
              " values (realtime.topic(), $1, '{}', 'x', true)")
    for topic, extension in (("agent:a1", "broadcast"), ("presence", "presence")):
        async with acting_as(conn, "a1"):
            await conn.execute("select set_config('realtime.topic', $1, true)", topic)
            await conn.execute(insert, extension)
    for topic, extension in (("agent:b1", "broadcast"), ("channel:news", "broadcast"), ("presence", "broadcast")):
        async with acting_as(conn, "a1"):
            await conn.execute("select set_config('realtime.topic', $1, true)", topic)
            await expect_error("42501", conn.execute(insert, extension))


async def test_realtime_topic_read_policy(conn: asyncpg.Connection) -> None:
    """An agent may read its own topic, presence, locks and channels it subscribes to; not others' topics."""
    await _world(conn)
    await conn.execute("insert into realtime.messages (topic, extension, payload, event, private)"
                       " select t, 'broadcast', '{}', 'x', true from unnest($1::text[]) t",
                       ["agent:a1", "agent:b1", "channel:news", "channel:jobs", "presence", "locks"])
    visible = {}
    for topic in ("agent:a1", "agent:b1", "channel:news", "channel:jobs", "presence", "locks"):
        async with acting_as(conn, "a1"):
            await conn.execute("select set_config('realtime.topic', $1, true)", topic)
            visible[topic] = await conn.fetchval("select count(*) from realtime.messages where topic = $1", topic)
    assert visible == {"agent:a1": 1, "agent:b1": 0, "channel:news": 1, "channel:jobs": 0, "presence": 1,
                       "locks": 1}

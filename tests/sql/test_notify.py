"""Wake-ups: the triggers' pg_notify hints (messages, presence, locks), each on its topic's own
notification channel, and realtime.send only where wakeup_routes says so."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from typing import Any

import asyncpg
import pytest

from agent_runtime.transports import wire
from tests.sql._helpers import acting_as, call, connections, expect_error, listening, realtime_payloads, register, send


async def _setup(conn: asyncpg.Connection) -> None:
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")


async def test_batch_send_notifies_once_with_max_seq(db_url: str, conn: asyncpg.Connection) -> None:
    """A batch insert notifies once for its channel, carrying the highest seq (on a broadcast
    channel, small batches also carry their messages: see test_wakeup_messages.py)."""
    await _setup(conn)
    async with listening(db_url, "channel:news", "channel:jobs") as listener:
        await call(conn, "send_messages", agent_id="a1", channel="news", messages=[{"payload": i} for i in range(5)])
        await call(conn, "send_messages", agent_id="a1", channel="jobs", messages=[{"payload": i} for i in range(5)])
        events = await listener.settle(conn)
    assert [{k: e[k] for k in ("c", "s", "t", "e")} for e in events] == [
        {"c": "news", "s": 5, "t": "channel:news", "e": "message"},
        {"c": "jobs", "s": 5, "t": "channel:jobs", "e": "message"}]
    assert [m["payload"] for m in json.loads(events[0]["m"])] == [0, 1, 2, 3, 4]
    assert events[1] == {"c": "jobs", "s": 5, "t": "channel:jobs", "e": "message"}  # a queue's: a bare hint


async def test_inbox_notifies_on_agent_topic(db_url: str, conn: asyncpg.Connection) -> None:
    """A message to an inbox is announced on the agent's own topic agent:<id>."""
    await _setup(conn)
    async with listening(db_url, "agent:b1") as listener:
        await send(conn, "a1", "agent:b1", {"hi": 1})
        events = await listener.settle(conn)
    assert events == [{"c": "agent:b1", "s": 1, "t": "agent:b1", "e": "message"}]


async def test_one_notify_per_statement_and_channel(db_url: str, conn: asyncpg.Connection) -> None:
    """Each insert statement notifies each channel it wrote to once; nothing is sent before commit."""
    await _setup(conn)
    async with listening(db_url, "channel:news", "channel:jobs") as listener:
        async with conn.transaction():
            await send(conn, "a1", "news", 1)
            await send(conn, "a1", "jobs", 1)
            await send(conn, "a1", "news", 2)
            await send(conn, "a1", "news", 3)
            # A notify committed by another session now arrives; ours are still held back.
            assert await listener.settle(listener.conn) == []
        events = await listener.settle(conn)
    assert sorted((e["c"], e["s"]) for e in events) == [("jobs", 1), ("news", 1), ("news", 2), ("news", 3)]


async def test_rolled_back_send_notifies_nothing(db_url: str, conn: asyncpg.Connection) -> None:
    """A send in a transaction that rolls back produces no wake-up."""
    await _setup(conn)
    async with listening(db_url, "channel:news") as listener:
        tr = conn.transaction()
        await tr.start()
        await send(conn, "a1", "news", 1)
        await tr.rollback()
        assert await listener.settle(conn) == []


async def test_nack_and_replay_wake_consumers(db_url: str, conn: asyncpg.Connection) -> None:
    """A queue nack and a dead-letter replay make a message ready again and notify its channel."""
    await _setup(conn)
    sent = await send(conn, "a1", "jobs", 1)
    await call(conn, "claim_messages", agent_id="b1", channel="jobs")
    async with listening(db_url, "channel:jobs") as listener:
        await call(conn, "nack_message", agent_id="b1", message_id=sent["id"])
        assert await listener.settle(conn) == [{"c": "jobs", "s": 1, "t": "channel:jobs", "e": "message"}]
        await call(conn, "claim_messages", agent_id="b1", channel="jobs")
        assert await listener.settle(conn) == []  # a claim is not news
        await call(conn, "nack_message", agent_id="b1", message_id=sent["id"], dead=True)
        assert await listener.settle(conn) == []
        await call(conn, "replay_dead_letters", agent_id="b1", message_ids=[sent["id"]])
        assert await listener.settle(conn) == [{"c": "jobs", "s": 1, "t": "channel:jobs", "e": "message"}]


async def test_presence_events(db_url: str, conn: asyncpg.Connection) -> None:
    """Join on register, status on a change, nothing on a plain heartbeat, leave on deregister, join
    on resume; each signed: 'at' the database clock (increasing), 'h' its HMAC with the wake-up key."""
    key = bytes.fromhex(await call(conn, "wakeup_key"))
    seen: list[int] = []

    async def settled(listener: Any) -> list[dict[str, Any]]:
        events = await listener.settle(conn)
        for event in events:
            at, mac = event.pop("at"), event.pop("h")
            signed = f"presence\n{event['a']}\n{event['k']}\n{event['st']}\n{at}".encode()
            assert mac == hmac.new(key, signed, hashlib.sha256).hexdigest()
            assert not seen or at > seen[-1]
            seen.append(at)
        return list(events)

    async with listening(db_url, "presence") as listener:
        await register(conn, "a1")
        assert await settled(listener) == [
            {"a": "a1", "k": "join", "st": "online", "t": "presence", "e": "presence"}]
        await call(conn, "update_agent_last_seen", agent_id="a1")
        assert await settled(listener) == []
        await call(conn, "set_agent_status", agent_id="a1", status="busy")
        assert await settled(listener) == [
            {"a": "a1", "k": "status", "st": "busy", "t": "presence", "e": "presence"}]
        await call(conn, "deregister_agent", agent_id="a1")
        assert await settled(listener) == [
            {"a": "a1", "k": "leave", "st": "offline", "t": "presence", "e": "presence"}]
        await register(conn, "a1")
        assert await settled(listener) == [
            {"a": "a1", "k": "join", "st": "online", "t": "presence", "e": "presence"}]
    assert len(seen) == 4


async def test_lock_release_notifies(db_url: str, conn: asyncpg.Connection) -> None:
    """Releasing a lock announces the key on 'locks'; acquiring and renewing do not."""
    await register(conn, "a1")
    lease = uuid.uuid4()
    async with listening(db_url, "locks") as listener:
        await call(conn, "acquire_lock", agent_id="a1", key="job:1", lease_id=lease, ttl_ms=10000)
        await call(conn, "renew_lock", agent_id="a1", key="job:1", lease_id=lease, ttl_ms=10000)
        assert await listener.settle(conn) == []
        await call(conn, "release_lock", agent_id="a1", key="job:1", lease_id=lease)
        assert await listener.settle(conn) == [{"k": "job:1", "t": "locks", "e": "released"}]


async def test_a_release_with_a_waiter_queued_in_the_database_sends_no_hint(
        db_url: str, conn: asyncpg.Connection) -> None:
    """A waiter queued in the database takes the released lease itself: the release sends no
    'locks' hint then (it would wake every listener for nothing). Deletes other than a release
    (an agent deregistering) still announce their keys."""
    await register(conn, "a1")
    await register(conn, "b1")
    lease = uuid.uuid4()
    await call(conn, "acquire_lock", agent_id="a1", key="job:1", lease_id=lease, ttl_ms=10000)
    async with listening(db_url, "locks") as listener, connections(db_url, 1) as (waiter_conn,):
        waiter = asyncio.create_task(call(waiter_conn, "acquire_lock", agent_id="b1", key="job:1",
                                          lease_id=uuid.uuid4(), ttl_ms=10000, wait_ms=5000))
        for _ in range(100):  # until it waits in the queue (it holds the key's queue lock)
            if await conn.fetchval("select count(*) from pg_locks where locktype = 'advisory'"
                                   " and classid = 1095910475 and granted"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the waiter never queued")
        assert await call(conn, "release_lock", agent_id="a1", key="job:1", lease_id=lease) is True
        got = await asyncio.wait_for(waiter, 3)
        assert got["acquired"] is True and got["owner_id"] == "b1"
        assert await listener.settle(conn) == []
        await call(conn, "acquire_lock", agent_id="a1", key="job:2", lease_id=uuid.uuid4(), ttl_ms=10000)
        await call(conn, "deregister_agent", agent_id="b1")
        await call(conn, "deregister_agent", agent_id="a1")
        assert sorted(event["k"] for event in await listener.settle(conn)) == ["job:1", "job:2"]


async def test_realtime_send_mirrors_the_hint(db_url: str, conn: asyncpg.Connection) -> None:
    """Every hint is also broadcast through realtime.send as a private message on the same topic."""
    await _setup(conn)
    async def send_one() -> None:
        await send(conn, "a1", "news", 1)

    [event] = await realtime_payloads(db_url, conn, send_one)
    assert event["topic"] == "channel:news" and event["event"] == "message" and event["private"] is True
    assert event["payload"]["c"] == "news" and event["payload"]["s"] == 1


async def test_a_wakeup_reaches_only_the_listeners_of_its_topic(db_url: str, conn: asyncpg.Connection) -> None:
    """A wake-up for one topic is not received by a connection listening only to another."""
    await _setup(conn)
    await call(conn, "ensure_channel", agent_id="a1", name="other")
    async with listening(db_url, "channel:other", "agent:a1") as elsewhere, \
            listening(db_url, "channel:news") as here:
        await send(conn, "a1", "news", 1)
        await send(conn, "a1", "agent:b1", 2)
        await call(conn, "set_agent_status", agent_id="a1", status="busy")
        assert await elsewhere.settle(conn) == []
        assert [(e["t"], e["s"]) for e in await here.settle(conn)] == [("channel:news", 1)]
        await send(conn, "a1", "other", 3)
        assert [(e["t"], e["s"]) for e in await elsewhere.settle(conn)] == [("channel:other", 1)]


@pytest.mark.parametrize("topic", [
    "presence", "locks", "agent:b1", "channel:news", "", "channel:héllo wörld ✓", "channel:" + "x" * 1000,
])
async def test_the_sql_and_the_wire_module_name_the_same_channel(conn: asyncpg.Connection, topic: str) -> None:
    """topic_channel (SQL) and wire.notification_channel (Python) agree, within the 63-byte limit."""
    channel = await conn.fetchval("select agent_runtime_private.topic_channel($1)", topic)
    assert channel == wire.notification_channel(topic)
    assert len(channel.encode()) <= 63


async def test_plain_postgres_sends_no_realtime_broadcast(db_url: str, conn: asyncpg.Connection) -> None:
    """Without a Realtime to hear it (plain Postgres, no stand-in), no wake-up calls realtime.send;
    with pg_notify routed off too, nothing is notified at all."""
    await _setup(conn)
    assert tuple(await conn.fetchrow("select notify, realtime from agent_runtime_private.wakeup_routes")) \
        == (True, False)

    async def traffic() -> None:
        await send(conn, "a1", "news", 1)
        await send(conn, "a1", "agent:b1", 1)
        await call(conn, "set_agent_status", agent_id="a1", status="busy")

    assert await realtime_payloads(db_url, conn, traffic, routed=False) == []
    await conn.execute("update agent_runtime_private.wakeup_routes set notify = false")
    async with listening(db_url, "channel:news", "agent:b1", "presence") as listener:
        await traffic()
        assert await listener.settle(conn) == []


async def test_only_the_owner_reads_or_changes_the_routes(conn: asyncpg.Connection) -> None:
    """No API role (nor a session's settings) can turn wake-ups off or route them elsewhere."""
    await register(conn, "b1")
    for role, agent in (("authenticated", "b1"), ("anon", None), ("service_role", None)):
        async with acting_as(conn, agent, role=role):
            await expect_error("42501", conn.execute("update agent_runtime_private.wakeup_routes set notify = false"),
                               role)
        async with acting_as(conn, agent, role=role):
            await expect_error("42501", conn.fetch("select * from agent_runtime_private.wakeup_routes"), role)

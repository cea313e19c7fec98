"""Sending: send_message and send_messages (batches, idempotency, TTL, delay, validation)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from agent_runtime.testing import AdvanceClock
from tests.sql._helpers import Json, call, connections, count, expect_error, refused_unchanged, register, send


async def _setup(conn: asyncpg.Connection) -> None:
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")
    await call(conn, "subscribe_channel", agent_id="b1", channel="news")


async def test_send_message_stores_every_field(conn: asyncpg.Connection) -> None:
    """send_message numbers the message on its channel and stores payload, headers and request fields."""
    await _setup(conn)
    corr = uuid.uuid4()
    sent = await send(conn, "a1", "news", {"x": 1}, headers={"h": "v"}, correlation_id=corr, reply_to="agent:a1")
    assert sent["seq"] == 1 and sent["duplicate"] is False
    [msg] = await call(conn, "fetch_messages", agent_id="b1", channel="news")
    assert msg["id"] == sent["id"] and msg["seq"] == 1 and msg["channel"] == "news"
    assert msg["sender_id"] == "a1" and msg["payload"] == {"x": 1} and msg["headers"] == {"h": "v"}
    assert msg["correlation_id"] == str(corr) and msg["reply_to"] == "agent:a1"
    assert msg["size_bytes"] == len('{"x": 1}') and msg["attempts"] == 1 and msg["expires_at"] is None


async def test_send_json_null_and_scalar_payloads(conn: asyncpg.Connection) -> None:
    """A JSON null, string or number is a valid payload; only a missing payload is refused."""
    await _setup(conn)
    await send(conn, "a1", "news", None)
    await send(conn, "a1", "news", "text")
    await send(conn, "a1", "news", 3)
    got = await call(conn, "fetch_messages", agent_id="b1", channel="news")
    assert [m["payload"] for m in got] == [None, "text", 3]
    await refused_unchanged(conn, "AR400", "send_message", agent_id="a1", channel="news", payload=None)


async def test_batch_send_is_ordered(conn: asyncpg.Connection) -> None:
    """send_messages inserts a batch with consecutive seqs in the given order and returns one result each."""
    await _setup(conn)
    await send(conn, "a1", "news", {"n": 0})
    result = await call(
        conn, "send_messages", agent_id="a1", channel="news",
        messages=[{"payload": {"n": i}, "headers": {"i": str(i)}} for i in range(1, 6)],
    )
    assert [r["seq"] for r in result] == [2, 3, 4, 5, 6]
    assert [r["duplicate"] for r in result] == [False] * 5
    assert [r["id"] for r in result] == sorted(r["id"] for r in result)
    got = await call(conn, "fetch_messages", agent_id="b1", channel="news")
    assert [m["payload"]["n"] for m in got] == [0, 1, 2, 3, 4, 5]
    assert await conn.fetchval("select last_seq from communication_channels where name = 'news'") == 6


async def test_empty_batch(conn: asyncpg.Connection) -> None:
    """An empty batch sends nothing and returns an empty list."""
    await _setup(conn)
    assert await call(conn, "send_messages", agent_id="a1", channel="news", messages=Json([])) == []
    assert await count(conn, "distributed_messages") == 0


async def test_idempotency_key_resend_is_noop(conn: asyncpg.Connection) -> None:
    """Re-sending with the same idempotency key returns the original id with duplicate=true and stores nothing."""
    await _setup(conn)
    first = await send(conn, "a1", "jobs", {"v": 1}, idempotency_key="k1")
    again = await send(conn, "a1", "jobs", {"v": 2}, idempotency_key="k1")
    assert again == {"id": first["id"], "seq": first["seq"], "duplicate": True}
    assert await count(conn, "distributed_messages") == 1
    assert await conn.fetchval("select last_seq from communication_channels where name = 'jobs'") == 1
    # The key is per sender: another agent may use the same key.
    other = await send(conn, "b1", "jobs", {"v": 3}, idempotency_key="k1")
    assert other["duplicate"] is False and other["id"] != first["id"]


async def test_idempotency_in_batches(conn: asyncpg.Connection) -> None:
    """In a batch, already-sent keys and keys repeated in the batch come back as duplicates of the original."""
    await _setup(conn)
    old = await send(conn, "a1", "jobs", {"v": 0}, idempotency_key="old")
    result = await call(
        conn, "send_messages", agent_id="a1", channel="jobs",
        messages=[
            {"payload": 1, "idempotency_key": "new"},
            {"payload": 2, "idempotency_key": "old"},
            {"payload": 3},
            {"payload": 4, "idempotency_key": "new"},
        ],
    )
    assert len(result) == 4
    assert result[0]["duplicate"] is False and result[2]["duplicate"] is False
    assert result[1] == {"id": old["id"], "seq": old["seq"], "duplicate": True}
    assert result[3] == {"id": result[0]["id"], "seq": result[0]["seq"], "duplicate": True}
    assert [r["seq"] for r in result] == [2, 1, 3, 2]
    payloads = await conn.fetch("select payload from distributed_messages order by seq")
    assert [p["payload"] for p in payloads] == ["{\"v\": 0}", "1", "3"]


async def test_concurrent_idempotent_sends_store_one_message(db_url: str, conn: asyncpg.Connection) -> None:
    """Two concurrent sends with one idempotency key store one message; the loser gets it back or AR408."""
    await _setup(conn)
    async with connections(db_url, 2) as (c1, c2):
        results = await asyncio.gather(
            send(c1, "a1", "jobs", {"v": 1}, idempotency_key="race"),
            send(c2, "a1", "jobs", {"v": 2}, idempotency_key="race"),
            return_exceptions=True,
        )
    assert await count(conn, "distributed_messages") == 1
    stored = await conn.fetchval("select id from distributed_messages")
    ok = [r for r in results if isinstance(r, dict)]
    errors = [r for r in results if not isinstance(r, dict)]
    assert any(r["duplicate"] is False and r["id"] == stored for r in ok)
    assert all(r["id"] == stored for r in ok)
    assert all(isinstance(e, asyncpg.PostgresError) and e.sqlstate == "AR408" for e in errors)


async def test_batch_with_one_bad_message_sends_nothing(conn: asyncpg.Connection) -> None:
    """One oversized or malformed message refuses the whole batch and leaves the channel untouched."""
    await _setup(conn)
    await call(conn, "ensure_channel", agent_id="a1", name="small", max_payload_bytes=10)
    await refused_unchanged(conn, "AR413", "send_messages", agent_id="a1", channel="small",
                            messages=[{"payload": 1}, {"payload": "x" * 20}, {"payload": 2}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1}, {"headers": {}}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "headers": [{"x": 1}]}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "correlation_id": "not-a-uuid"}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "ttl_ms": "soon"}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "ttl_ms": 0}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "delay_ms": -1}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "idempotency_key": ""}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "idempotency_key": "k" * 201}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=[{"payload": 1, "reply_to": "bad reply"}])
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=Json({"payload": 1}))
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="a1", channel="news",
                            messages=Json([{"payload": i} for i in range(10001)]))


async def test_payload_size_limit_is_exact(conn: asyncpg.Connection) -> None:
    """A payload of exactly max_payload_bytes is accepted and one byte more is AR413."""
    await _setup(conn)
    await call(conn, "ensure_channel", agent_id="a1", name="small", max_payload_bytes=10)
    await send(conn, "a1", "small", "x" * 8)  # '"xxxxxxxx"' is 10 bytes
    await refused_unchanged(conn, "AR413", "send_message", agent_id="a1", channel="small", payload=Json("x" * 9))


async def test_send_refusals(conn: asyncpg.Connection) -> None:
    """Unknown channel AR405, unknown recipient inbox or sender AR404: nothing is stored."""
    await _setup(conn)
    await refused_unchanged(conn, "AR405", "send_message", agent_id="a1", channel="nope", payload=Json(1))
    await refused_unchanged(conn, "AR404", "send_message", agent_id="a1", channel="agent:ghost", payload=Json(1))
    await refused_unchanged(conn, "AR404", "send_message", agent_id="ghost", channel="news", payload=Json(1))


async def test_message_ttl_hides_and_cleanup_deletes(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """A message past its TTL (database clock) is neither fetched nor claimed, and cleanup deletes it."""
    await _setup(conn)
    await send(conn, "a1", "news", {"n": 1}, ttl_ms=200)
    await send(conn, "a1", "jobs", {"n": 1}, ttl_ms=200)
    await send(conn, "a1", "news", {"n": 2})
    await advance_clock(0.3)
    got = await call(conn, "fetch_messages", agent_id="b1", channel="news")
    assert [m["payload"]["n"] for m in got] == [2]
    assert await call(conn, "claim_messages", agent_id="b1", channel="jobs") == []
    assert await call(conn, "cleanup_expired_messages") == 2
    assert await count(conn, "distributed_messages") == 1


async def test_channel_message_ttl_is_the_default(conn: asyncpg.Connection) -> None:
    """A channel's message_ttl sets expires_at when the sender gives none; a sender's ttl_ms overrides it."""
    await _setup(conn)
    await call(conn, "ensure_channel", agent_id="a1", name="brief", kind="queue", message_ttl_ms=5000)
    await send(conn, "a1", "brief", 1)
    await send(conn, "a1", "brief", 2, ttl_ms=60000)
    ttls = await conn.fetch(
        "select extract(epoch from expires_at - created_at)::int as ttl from distributed_messages order by seq"
    )
    assert [r["ttl"] for r in ttls] == [5, 60]


async def test_delayed_message_becomes_visible_later(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """A message sent with delay_ms cannot be claimed before the delay has passed."""
    await _setup(conn)
    await send(conn, "a1", "jobs", {"n": 1}, delay_ms=400)
    assert await call(conn, "claim_messages", agent_id="b1", channel="jobs") == []
    await advance_clock(0.5)
    got = await call(conn, "claim_messages", agent_id="b1", channel="jobs")
    assert [m["payload"] for m in got] == [{"n": 1}]


async def test_send_to_inbox(conn: asyncpg.Connection) -> None:
    """Sending to agent:<id> lands in that agent's inbox, which only it can claim."""
    await _setup(conn)
    await send(conn, "a1", "agent:b1", {"hi": True})
    await expect_error("AR403", call(conn, "claim_messages", agent_id="a1", channel="agent:b1"))
    got = await call(conn, "claim_messages", agent_id="b1", channel="agent:b1")
    assert [m["payload"] for m in got] == [{"hi": True}]

"""Metrics (record_communication_metrics, get_communication_metrics) and the janitor's cleanup
functions (cleanup_expired_messages, cleanup_expired_locks, cleanup_stale_presence,
cleanup_old_metrics, run_cleanup)."""

from __future__ import annotations

import uuid

import asyncpg

from agent_runtime.testing import AdvanceClock
from tests.sql._helpers import Json, call, count, listening, refused_unchanged, register, send


async def test_metrics_batches_aggregate_into_one_bucket(conn: asyncpg.Connection) -> None:
    """Batches recorded in the same minute add up in one row per agent x channel x metric x bucket."""
    await register(conn, "a1")
    async with conn.transaction():  # one now(): certainly the same bucket
        n = await call(conn, "record_communication_metrics", agent_id="a1", metrics=[
            {"metric": "messages.sent", "channel": "news", "count": 2, "sum": 30.0, "min": 10.0, "max": 20.0},
            {"metric": "messages.sent", "channel": "news", "count": 1, "sum": 5.0, "min": 5.0, "max": 5.0},
            {"metric": "lock.wait_ms", "count": 1, "sum": 7.5},
        ])
        assert n == 2  # the two entries of one key were grouped into one upsert
        await call(conn, "record_communication_metrics", agent_id="a1", metrics=[
            {"metric": "messages.sent", "channel": "news", "count": 3, "sum": 90.0, "min": 25.0, "max": 40.0},
        ])
    rows = await conn.fetch("select * from communication_metrics where metric = 'messages.sent'")
    assert len(rows) == 1
    row = rows[0]
    assert (row["count"], row["sum"], row["min"], row["max"]) == (6, 125.0, 5.0, 40.0)
    assert await conn.fetchval("select bucket = date_trunc('minute', bucket) from communication_metrics limit 1")

    got = {(m["metric"], m["channel"]): m for m in await call(conn, "get_communication_metrics", agent_id="a1")}
    sent = got[("messages.sent", "news")]
    assert (sent["count"], sent["sum"], sent["min"], sent["max"]) == (6, 125.0, 5.0, 40.0)
    assert abs(sent["mean"] - 125.0 / 6) < 1e-9
    assert got[("lock.wait_ms", "")]["count"] == 1 and got[("lock.wait_ms", "")]["min"] is None


async def test_metrics_count_defaults_to_one(conn: asyncpg.Connection) -> None:
    """An entry without count counts as one event (a custom counter)."""
    await register(conn, "a1")
    await call(conn, "record_communication_metrics", agent_id="a1", metrics=[{"metric": "custom.ping"}] * 3)
    [m] = await call(conn, "get_communication_metrics", metric="custom.ping")
    assert m["count"] == 3 and m["sum"] == 0


async def test_get_metrics_filters(conn: asyncpg.Connection) -> None:
    """get_communication_metrics filters by agent, metric and time window (older buckets are left out)."""
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "record_communication_metrics", agent_id="a1", metrics=[{"metric": "x", "count": 1}])
    await call(conn, "record_communication_metrics", agent_id="b1", metrics=[{"metric": "x", "count": 2},
                                                                             {"metric": "y", "count": 4}])
    everything = await call(conn, "get_communication_metrics")
    assert [(m["agent_id"], m["metric"], m["count"]) for m in everything] == [("a1", "x", 1), ("b1", "x", 2),
                                                                             ("b1", "y", 4)]
    assert [m["agent_id"] for m in await call(conn, "get_communication_metrics", metric="x")] == ["a1", "b1"]
    assert [m["metric"] for m in await call(conn, "get_communication_metrics", agent_id="b1")] == ["x", "y"]
    await conn.execute("update communication_metrics set bucket = bucket - interval '2 hours' where agent_id = 'a1'")
    assert [m["agent_id"] for m in await call(conn, "get_communication_metrics", metric="x")] == ["b1"]
    old = await call(conn, "get_communication_metrics", agent_id="a1", since_ms=3 * 3600 * 1000)
    assert [m["count"] for m in old] == [1]


async def test_metrics_bad_input_changes_nothing(conn: asyncpg.Connection) -> None:
    """Malformed metric batches are AR400 (all or nothing); an unknown agent is AR404."""
    await register(conn, "a1")
    good = {"metric": "ok", "count": 1}
    for bad in (
        [good, {"count": 1}],
        [good, {"metric": "Bad-Name", "count": 1}],
        [good, {"metric": "x", "count": "many"}],
        [good, {"metric": "x", "count": 1.5}],
        [good, {"metric": "x", "sum": "lots"}],
        [good, 5],
    ):
        await refused_unchanged(conn, "AR400", "record_communication_metrics", agent_id="a1", metrics=Json(bad))
    await refused_unchanged(conn, "AR400", "record_communication_metrics", agent_id="a1", metrics=Json(good))
    await refused_unchanged(conn, "AR400", "record_communication_metrics", agent_id="a1",
                            metrics=Json([good] * 10001))
    await refused_unchanged(conn, "AR404", "record_communication_metrics", agent_id="ghost", metrics=[good])


async def test_cleanup_old_metrics(conn: asyncpg.Connection) -> None:
    """cleanup_old_metrics deletes buckets older than the retention and keeps recent ones."""
    await register(conn, "a1")
    await call(conn, "record_communication_metrics", agent_id="a1", metrics=[{"metric": "old"}])
    await conn.execute("update communication_metrics set bucket = bucket - interval '2 days'")
    await call(conn, "record_communication_metrics", agent_id="a1", metrics=[{"metric": "new"}])
    assert await call(conn, "cleanup_old_metrics") == 0  # default retention: 7 days
    assert await call(conn, "cleanup_old_metrics", older_than_ms=86_400_000) == 1
    assert [r["metric"] for r in await conn.fetch("select metric from communication_metrics")] == ["new"]
    await refused_unchanged(conn, "AR400", "cleanup_old_metrics", older_than_ms=1000)


async def test_cleanup_expired_messages(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """Cleanup deletes expired, past-retention and long-acked messages, keeps live and dead ones, honours the limit."""
    await register(conn, "a1")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")
    await call(conn, "ensure_channel", agent_id="a1", name="short", kind="queue", retention_ms=1000)
    live = await send(conn, "a1", "jobs", "live")
    for i in range(3):
        await send(conn, "a1", "jobs", i, ttl_ms=100)
    dead = await send(conn, "a1", "jobs", "dead", ttl_ms=100)
    await conn.execute("update distributed_messages set state = 'dead' where id = $1", dead["id"])
    acked = await send(conn, "a1", "jobs", "acked")
    await conn.execute("update distributed_messages set state = 'acked', acked_at = now() - interval '2 hours'"
                       " where id = $1", acked["id"])
    await send(conn, "a1", "short", "old")
    await conn.execute("update distributed_messages set created_at = now() - interval '2 seconds'"
                       " where channel_id = (select id from communication_channels where name = 'short')")
    await advance_clock(0.15)
    assert await call(conn, "cleanup_expired_messages", limit=2) == 2
    assert await call(conn, "cleanup_expired_messages") == 3
    assert await call(conn, "cleanup_expired_messages") == 0
    left = {r["id"] for r in await conn.fetch("select id from distributed_messages")}
    assert left == {live["id"], dead["id"]}


async def test_cleanup_expired_locks(db_url: str, conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """Expired locks are deleted (each announced as released); live ones stay."""
    await register(conn, "a1")
    await call(conn, "acquire_lock", agent_id="a1", key="gone", lease_id=uuid.uuid4(), ttl_ms=100)
    await call(conn, "acquire_lock", agent_id="a1", key="live", lease_id=uuid.uuid4(), ttl_ms=60000)
    await advance_clock(0.15)
    async with listening(db_url, "locks") as listener:
        assert await call(conn, "cleanup_expired_locks") == 1
        events = await listener.settle(conn)
    assert events == [{"k": "gone", "t": "locks", "e": "released"}]
    assert [r["key"] for r in await conn.fetch("select key from distributed_locks")] == ["live"]


async def test_cleanup_stale_presence_emits_leave(db_url: str, conn: asyncpg.Connection) -> None:
    """Stale agents go offline with a 'leave' event (fresh ones stay) and rejoin on their next heartbeat."""
    await register(conn, "stale")
    await register(conn, "fresh")
    await conn.execute("update agent_presence set expires_at = now() - interval '1 second' where agent_id = 'stale'")
    async with listening(db_url, "presence") as listener:
        assert await call(conn, "cleanup_stale_presence") == 1
        events = await listener.settle(conn)
        statuses = dict(await conn.fetch("select id, status from distributed_agents"))
        assert statuses == {"stale": "offline", "fresh": "online"}
        assert await conn.fetchval("select status from agent_presence where agent_id = 'stale'") == "offline"
        assert await call(conn, "cleanup_stale_presence") == 0
        assert await listener.settle(conn) == []
        # Its next heartbeat brings it back, with a join event.
        await call(conn, "update_agent_last_seen", agent_id="stale")
        rejoined = await listener.settle(conn)
    unsigned = ("at", "h")  # (the signature: tests/sql/test_notify.py)
    assert [{k: v for k, v in e.items() if k not in unsigned} for e in events] == [
        {"a": "stale", "k": "leave", "st": "offline", "t": "presence", "e": "presence"}]
    assert [{k: v for k, v in e.items() if k not in unsigned} for e in rejoined] == [
        {"a": "stale", "k": "join", "st": "online", "t": "presence", "e": "presence"}]


async def test_run_cleanup_reports_each_part(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """run_cleanup runs every cleanup and reports how much each removed."""
    await register(conn, "a1")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")
    await send(conn, "a1", "jobs", 1, ttl_ms=100)
    await call(conn, "acquire_lock", agent_id="a1", key="k", lease_id=uuid.uuid4(), ttl_ms=100)
    await call(conn, "record_communication_metrics", agent_id="a1", metrics=[{"metric": "m"}])
    await conn.execute("update communication_metrics set bucket = bucket - interval '30 days'")
    await conn.execute("update agent_presence set expires_at = now() - interval '1 second'")
    await advance_clock(0.15)
    report = await call(conn, "run_cleanup")
    assert report == {"stale_presence": 1, "expired_locks": 1, "expired_messages": 1, "old_metrics": 1}
    for table in ("distributed_messages", "distributed_locks", "communication_metrics"):
        assert await count(conn, table) == 0

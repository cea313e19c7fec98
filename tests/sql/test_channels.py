"""Channels and subscriptions: ensure_channel, list_channels, subscribe_channel, unsubscribe_channel."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.sql._helpers import call, connections, count, expect_error, refused_unchanged, register, send


async def test_ensure_channel_creates_with_settings(conn: asyncpg.Connection) -> None:
    """ensure_channel stores the requested settings and reports them in milliseconds."""
    await register(conn, "a1")
    ch = await call(
        conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue", retention_ms=3_600_000,
        message_ttl_ms=60_000, max_attempts=3, visibility_timeout_ms=1500, max_payload_bytes=1024,
        metadata={"team": "x"},
    )
    assert ch["name"] == "jobs" and ch["kind"] == "queue" and ch["owner_id"] is None
    assert ch["retention_ms"] == 3_600_000 and ch["message_ttl_ms"] == 60_000
    assert ch["max_attempts"] == 3 and ch["visibility_timeout_ms"] == 1500
    assert ch["max_payload_bytes"] == 1024 and ch["metadata"] == {"team": "x"}
    assert ch["last_seq"] == 0 and ch["created_by"] == "a1"


async def test_ensure_channel_is_idempotent_and_keeps_settings(conn: asyncpg.Connection) -> None:
    """Ensuring an existing channel returns it unchanged (same id, original settings)."""
    await register(conn, "a1")
    first = await call(conn, "ensure_channel", agent_id="a1", name="news", max_attempts=7)
    again = await call(conn, "ensure_channel", agent_id="a1", name="news", max_attempts=2)
    assert again["id"] == first["id"] and again["max_attempts"] == 7 and again["kind"] == "broadcast"
    assert await count(conn, "communication_channels", "name = 'news'") == 1


async def test_ensure_channel_kind_mismatch(conn: asyncpg.Connection) -> None:
    """Asking for an existing channel with another kind is AR412 and changes nothing."""
    await register(conn, "a1")
    await call(conn, "ensure_channel", agent_id="a1", name="news", kind="broadcast")
    await refused_unchanged(conn, "AR412", "ensure_channel", agent_id="a1", name="news", kind="queue")


async def test_ensure_channel_concurrent_creation(db_url: str, conn: asyncpg.Connection) -> None:
    """Several agents ensuring the same channel at once all get the one channel."""
    for i in range(6):
        await register(conn, f"a{i}")
    async with connections(db_url, 6) as conns:
        results = await asyncio.gather(
            *(call(c, "ensure_channel", agent_id=f"a{i}", name="shared", kind="queue") for i, c in enumerate(conns))
        )
    assert len({r["id"] for r in results}) == 1
    assert await count(conn, "communication_channels", "name = 'shared'") == 1


async def test_ensure_channel_bad_input_changes_nothing(conn: asyncpg.Connection) -> None:
    """Bad names are AR401, bad kinds and settings AR400, and nothing is created."""
    await register(conn, "a1")
    await refused_unchanged(conn, "AR401", "ensure_channel", agent_id="a1", name="bad name")
    await refused_unchanged(conn, "AR401", "ensure_channel", agent_id="a1", name="")
    await refused_unchanged(conn, "AR401", "ensure_channel", agent_id="a1", name="_x")
    await refused_unchanged(conn, "AR401", "ensure_channel", agent_id="a1", name="x" * 129)
    await refused_unchanged(conn, "AR401", "ensure_channel", agent_id="a1", name="agent:someone")
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", kind="direct")
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", kind="topic")
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", max_attempts=0)
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", visibility_timeout_ms=50)
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", retention_ms=10)
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", message_ttl_ms=0)
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", max_payload_bytes=2_000_000)
    await refused_unchanged(conn, "AR400", "ensure_channel", agent_id="a1", name="c", metadata=[{"x": 1}])


async def test_list_channels_counts(conn: asyncpg.Connection) -> None:
    """list_channels reports subscribers, ready and dead counts per channel, ordered by name."""
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue", max_attempts=1)
    await call(conn, "subscribe_channel", agent_id="b1", channel="news")
    await call(conn, "subscribe_channel", agent_id="a1", channel="news")
    await send(conn, "a1", "news", {"n": 1})
    for i in range(3):
        await send(conn, "a1", "jobs", {"n": i})
    [claimed] = await call(conn, "claim_messages", agent_id="b1", channel="jobs", limit=1)
    await call(conn, "nack_message", agent_id="b1", message_id=claimed["id"])
    channels = {c["name"]: c for c in await call(conn, "list_channels")}
    assert [c["name"] for c in await call(conn, "list_channels")] == ["agent:a1", "agent:b1", "jobs", "news"]
    assert channels["news"]["subscribers"] == 2 and channels["news"]["ready"] == 0
    assert channels["news"]["last_seq"] == 1
    assert channels["jobs"]["ready"] == 2 and channels["jobs"]["dead"] == 1


async def test_subscribe_latest_and_earliest(conn: asyncpg.Connection) -> None:
    """A new subscriber starts after the last message ('latest') or at the beginning ('earliest')."""
    await register(conn, "a1")
    await register(conn, "late")
    await register(conn, "replayer")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await send(conn, "a1", "news", {"n": 1})
    await send(conn, "a1", "news", {"n": 2})
    late = await call(conn, "subscribe_channel", agent_id="late", channel="news")
    early = await call(conn, "subscribe_channel", agent_id="replayer", channel="news", **{"from": "earliest"})
    assert late["cursor"] == 2 and late["last_seq"] == 2 and late["kind"] == "broadcast"
    assert early["cursor"] == 0
    await send(conn, "a1", "news", {"n": 3})
    assert [m["payload"]["n"] for m in await call(conn, "fetch_messages", agent_id="late", channel="news")] == [3]
    got = await call(conn, "fetch_messages", agent_id="replayer", channel="news")
    assert [m["payload"]["n"] for m in got] == [1, 2, 3]


async def test_resubscribe_keeps_cursor(conn: asyncpg.Connection) -> None:
    """Subscribing again (after a restart) keeps the durable cursor instead of resetting it."""
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await call(conn, "subscribe_channel", agent_id="b1", channel="news", **{"from": "earliest"})
    ids = [(await send(conn, "a1", "news", {"n": i}))["id"] for i in range(3)]
    assert await call(conn, "ack_messages", agent_id="b1", message_ids=ids[:2]) == 2
    again = await call(conn, "subscribe_channel", agent_id="b1", channel="news", **{"from": "earliest"})
    assert again["cursor"] == 2
    assert [m["id"] for m in await call(conn, "fetch_messages", agent_id="b1", channel="news")] == ids[2:]


async def test_unsubscribe(conn: asyncpg.Connection) -> None:
    """Unsubscribing removes the subscription (true), a second time is false, and fetch is then AR405."""
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await call(conn, "subscribe_channel", agent_id="b1", channel="news")
    assert await call(conn, "unsubscribe_channel", agent_id="b1", channel="news") is True
    assert await call(conn, "unsubscribe_channel", agent_id="b1", channel="news") is False
    await expect_error("AR405", call(conn, "fetch_messages", agent_id="b1", channel="news"))


async def test_subscribe_refusals_change_nothing(conn: asyncpg.Connection) -> None:
    """Unknown channel AR405, unknown inbox or agent AR404, another's inbox AR403, bad p_from AR400."""
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await refused_unchanged(conn, "AR405", "subscribe_channel", agent_id="a1", channel="nope")
    await refused_unchanged(conn, "AR404", "subscribe_channel", agent_id="a1", channel="agent:ghost")
    await refused_unchanged(conn, "AR404", "subscribe_channel", agent_id="ghost", channel="news")
    await refused_unchanged(conn, "AR403", "subscribe_channel", agent_id="a1", channel="agent:b1")
    await refused_unchanged(conn, "AR400", "subscribe_channel", agent_id="a1", channel="news", **{"from": "middle"})
    await refused_unchanged(conn, "AR405", "unsubscribe_channel", agent_id="a1", channel="nope")

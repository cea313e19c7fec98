"""Broadcast delivery: fetch_messages with durable cursors, cumulative ack, head-of-line nack,
per-subscriber dead letters and replay, and catch-up that never skips a late committer."""

from __future__ import annotations

import asyncio

import asyncpg

from agent_runtime.testing import AdvanceClock
from tests.sql._helpers import call, connections, count, expect_error, refused_unchanged, register, send


async def _setup(conn: asyncpg.Connection, **channel: object) -> None:
    for agent in ("p1", "s1", "s2"):
        await register(conn, agent)
    await call(conn, "ensure_channel", agent_id="p1", name="news", **channel)
    await call(conn, "subscribe_channel", agent_id="s1", channel="news")
    await call(conn, "subscribe_channel", agent_id="s2", channel="news")


async def _fetch(conn: asyncpg.Connection, agent: str, limit: int = 100) -> list[tuple[int, int]]:
    """(seq, attempts) of what the subscriber gets."""
    got = await call(conn, "fetch_messages", agent_id=agent, channel="news", limit=limit)
    return [(m["seq"], m["attempts"]) for m in got]


async def _cursor(conn: asyncpg.Connection, agent: str) -> int:
    cursor: int = await conn.fetchval(
        "select s.cursor_seq from channel_subscriptions s join communication_channels c on c.id = s.channel_id"
        " where c.name = 'news' and s.agent_id = $1", agent)
    return cursor


async def test_every_subscriber_sees_every_message(conn: asyncpg.Connection) -> None:
    """Fan-out: each subscriber fetches every message in seq order, independently of the others."""
    await _setup(conn)
    for i in range(3):
        await send(conn, "p1", "news", {"n": i})
    assert await _fetch(conn, "s1") == [(1, 1), (2, 1), (3, 1)]
    assert await _fetch(conn, "s2") == [(1, 1), (2, 1), (3, 1)]
    assert await _fetch(conn, "s1", limit=2) == [(1, 1), (2, 1)]


async def test_ack_is_cumulative_and_moves_only_own_cursor(conn: asyncpg.Connection) -> None:
    """Acking a seq moves that subscriber's cursor to it (everything before is acked), not anyone else's."""
    await _setup(conn)
    ids = [(await send(conn, "p1", "news", {"n": i}))["id"] for i in range(4)]
    assert await call(conn, "ack_messages", agent_id="s1", message_ids=[ids[2]]) == 1
    assert await _cursor(conn, "s1") == 3
    assert await _fetch(conn, "s1") == [(4, 1)]
    assert await _cursor(conn, "s2") == 0
    # An older ack never moves the cursor back.
    await call(conn, "ack_messages", agent_id="s1", message_ids=[ids[0]])
    assert await _cursor(conn, "s1") == 3
    # A non-subscriber's ack counts for nothing.
    assert await call(conn, "ack_messages", agent_id="p1", message_ids=ids) == 0


async def test_cursor_survives_reconnect(db_url: str, conn: asyncpg.Connection) -> None:
    """A subscriber resumes from its cursor on a new connection and receives what it missed."""
    await _setup(conn)
    first = await send(conn, "p1", "news", {"n": 1})
    await call(conn, "ack_messages", agent_id="s1", message_ids=[first["id"]])
    await send(conn, "p1", "news", {"n": 2})
    await send(conn, "p1", "news", {"n": 3})
    async with connections(db_url, 1) as (fresh,):
        await call(fresh, "subscribe_channel", agent_id="s1", channel="news")
        assert await _fetch(fresh, "s1") == [(2, 1), (3, 1)]


async def test_late_committer_is_not_skipped(db_url: str, conn: asyncpg.Connection) -> None:
    """A producer that commits late is not skipped: the other producer waits, and seq order is commit order."""
    await _setup(conn)
    async with connections(db_url, 2) as (a, b):
        tr = a.transaction()
        await tr.start()
        early = await send(a, "p1", "news", {"who": "A"})
        task = asyncio.create_task(send(b, "s2", "news", {"who": "B"}))
        await asyncio.sleep(0.2)
        assert not task.done()  # B waits for A's channel-row lock
        assert await _fetch(conn, "s1") == []  # nothing committed yet
        await tr.commit()
        late = await asyncio.wait_for(task, 5)
    got = await call(conn, "fetch_messages", agent_id="s1", channel="news")
    assert [(m["seq"], m["payload"]["who"]) for m in got] == [(1, "A"), (2, "B")]
    assert (early["seq"], late["seq"]) == (1, 2)


async def test_late_committer_after_ack(db_url: str, conn: asyncpg.Connection) -> None:
    """A subscriber that acked everything visible still gets a message committed after its ack."""
    await _setup(conn)
    first = await send(conn, "p1", "news", {"n": 1})
    async with connections(db_url, 2) as (a, b):
        tr = a.transaction()
        await tr.start()
        await send(a, "p1", "news", {"n": 2})
        task = asyncio.create_task(send(b, "s2", "news", {"n": 3}))
        assert [m for m, _ in await _fetch(conn, "s1")] == [1]
        await call(conn, "ack_messages", agent_id="s1", message_ids=[first["id"]])
        await tr.commit()
        await asyncio.wait_for(task, 5)
    got = await call(conn, "fetch_messages", agent_id="s1", channel="news")
    assert [m["payload"]["n"] for m in got] == [2, 3]


async def test_nack_is_head_of_line_with_delay(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """A nacked message holds back everything after it until its retry time, then comes first again."""
    await _setup(conn)
    ids = [(await send(conn, "p1", "news", {"n": i}))["id"] for i in range(3)]
    await call(conn, "ack_messages", agent_id="s1", message_ids=[ids[0]])
    result = await call(conn, "nack_message", agent_id="s1", message_id=ids[1], delay_ms=400, reason="later")
    assert result["state"] == "retry" and result["attempts"] == 1
    assert await _fetch(conn, "s1") == []
    assert await _fetch(conn, "s2") == [(1, 1), (2, 1), (3, 1)]  # other subscribers are unaffected
    await advance_clock(0.5)
    assert await _fetch(conn, "s1") == [(2, 2), (3, 1)]
    await call(conn, "ack_messages", agent_id="s1", message_ids=[ids[1]])
    row = await conn.fetchrow("select retry_seq, retry_attempts, retry_at from channel_subscriptions"
                              " where agent_id = 's1' and channel_id = (select id from communication_channels"
                              " where name = 'news')")
    assert tuple(row) == (None, 0, None)
    assert await _fetch(conn, "s1") == [(3, 1)]


async def test_nack_to_dead_letter_moves_cursor_past(conn: asyncpg.Connection) -> None:
    """After max attempts a broadcast message is a dead letter of that subscriber, and its cursor moves past it."""
    await _setup(conn, max_attempts=2)
    ids = [(await send(conn, "p1", "news", {"n": i}))["id"] for i in range(3)]
    await call(conn, "ack_messages", agent_id="s1", message_ids=[ids[0]])
    assert (await call(conn, "nack_message", agent_id="s1", message_id=ids[1]))["state"] == "retry"
    assert await _fetch(conn, "s1") == [(2, 2), (3, 1)]
    dead = await call(conn, "nack_message", agent_id="s1", message_id=ids[1], reason="poison")
    assert dead == {"state": "dead", "attempts": 2}
    assert await _cursor(conn, "s1") == 2
    assert await _fetch(conn, "s1") == [(3, 1)]
    row = await conn.fetchrow("select agent_id, attempts, reason, state from message_dead_letters")
    assert tuple(row) == ("s1", 2, "poison", "dead")
    [letter] = await call(conn, "list_dead_letters", channel="news")
    assert letter["id"] == ids[1] and letter["subscriber_id"] == "s1" and letter["reason"] == "poison"
    assert letter["dead_letter_id"] is not None
    # The shared message itself is untouched, and the other subscriber still gets it.
    assert await conn.fetchval("select state from distributed_messages where id = $1", ids[1]) == "ready"
    assert await _fetch(conn, "s2") == [(1, 1), (2, 1), (3, 1)]


async def test_replay_redelivers_only_to_that_subscriber(conn: asyncpg.Connection) -> None:
    """Replaying a broadcast dead letter redelivers it first to its subscriber only; an ack resolves it."""
    await _setup(conn)
    ids = [(await send(conn, "p1", "news", {"n": i}))["id"] for i in range(3)]
    await call(conn, "nack_message", agent_id="s1", message_id=ids[1], dead=True)
    await call(conn, "ack_messages", agent_id="s2", message_ids=[ids[2]])
    assert await call(conn, "replay_dead_letters", agent_id="s1", message_ids=[ids[1]]) == 1
    assert await call(conn, "list_dead_letters") == []
    assert await _fetch(conn, "s1") == [(2, 2), (3, 1)]
    assert await _fetch(conn, "s2") == []
    assert await call(conn, "ack_messages", agent_id="s1", message_ids=[ids[1]]) == 1
    assert await conn.fetchval("select state from message_dead_letters") == "resolved"
    assert await _fetch(conn, "s1") == [(3, 1)]


async def test_replayed_dead_letter_failing_again_is_dead(conn: asyncpg.Connection) -> None:
    """A replayed dead letter that is nacked again goes straight back to the dead letters."""
    await _setup(conn, max_attempts=5)
    sent = await send(conn, "p1", "news", {"n": 1})
    await call(conn, "nack_message", agent_id="s1", message_id=sent["id"], dead=True)
    await call(conn, "replay_dead_letters", agent_id="s1", message_ids=[sent["id"]])
    again = await call(conn, "nack_message", agent_id="s1", message_id=sent["id"], reason="still bad")
    assert again["state"] == "dead"
    assert await _fetch(conn, "s1") == []
    assert [m["reason"] for m in await call(conn, "list_dead_letters")] == ["still bad"]


async def test_stale_nack_after_resolution_is_ignored(conn: asyncpg.Connection) -> None:
    """Once a replayed dead letter is acked, a late nack of it changes nothing."""
    await _setup(conn)
    sent = await send(conn, "p1", "news", {"n": 1})
    await call(conn, "nack_message", agent_id="s1", message_id=sent["id"], dead=True)
    await call(conn, "replay_dead_letters", agent_id="s1", message_ids=[sent["id"]])
    await call(conn, "ack_messages", agent_id="s1", message_ids=[sent["id"]])
    assert (await call(conn, "nack_message", agent_id="s1", message_id=sent["id"]))["state"] == "ignored"
    assert await conn.fetchval("select state from message_dead_letters") == "resolved"
    assert await call(conn, "list_dead_letters") == []


async def test_nack_of_acked_message_is_ignored(conn: asyncpg.Connection) -> None:
    """Nacking a message at or before the cursor is 'ignored'; a non-subscriber's nack too."""
    await _setup(conn)
    sent = await send(conn, "p1", "news", {"n": 1})
    await call(conn, "ack_messages", agent_id="s1", message_ids=[sent["id"]])
    assert (await call(conn, "nack_message", agent_id="s1", message_id=sent["id"]))["state"] == "ignored"
    assert (await call(conn, "nack_message", agent_id="p1", message_id=sent["id"]))["state"] == "ignored"
    assert await _cursor(conn, "s1") == 1
    assert await count(conn, "message_dead_letters") == 0


async def test_fetch_refusals(conn: asyncpg.Connection) -> None:
    """Fetching a queue is AR412, an unknown channel AR405, without subscribing AR405, a bad limit AR400."""
    await _setup(conn)
    await call(conn, "ensure_channel", agent_id="p1", name="jobs", kind="queue")
    await refused_unchanged(conn, "AR412", "fetch_messages", agent_id="s1", channel="jobs")
    await refused_unchanged(conn, "AR412", "fetch_messages", agent_id="s1", channel="agent:s1")
    await refused_unchanged(conn, "AR405", "fetch_messages", agent_id="s1", channel="nope")
    await refused_unchanged(conn, "AR405", "fetch_messages", agent_id="p1", channel="news")
    await refused_unchanged(conn, "AR400", "fetch_messages", agent_id="s1", channel="news", limit=0)
    await expect_error("AR400", call(conn, "fetch_messages", agent_id="s1", channel="news", limit=None))



async def test_delay_is_refused_on_a_broadcast_channel(conn: asyncpg.Connection) -> None:
    """Broadcast delivers in order at once: a delayed message there is refused, and nothing is sent."""
    await _setup(conn)
    await refused_unchanged(conn, "AR400", "send_messages", agent_id="p1", channel="news",
                            messages=[{"payload": {"n": 1}}, {"payload": {"n": 2}, "delay_ms": 400}])
    await send(conn, "p1", "news", {"n": 0}, delay_ms=0)  # no delay is no delay
    assert await _fetch(conn, "s1") == [(1, 1)]

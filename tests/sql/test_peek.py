"""peek_messages: reads a channel by seq without consuming it, for trusted callers only."""

from __future__ import annotations

import asyncpg

from tests.sql._helpers import acting_as, call, expect_error, register, send


async def test_peek_reads_by_seq_and_consumes_nothing(conn: asyncpg.Connection) -> None:
    """Messages after a seq, in order, up to a limit; the queue's messages stay ready, cursors unmoved."""
    await register(conn, "a1")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")
    for i in range(5):
        await send(conn, "a1", "jobs", {"i": i})
    peeked = await call(conn, "peek_messages", channel="jobs", after_seq=1, limit=3)
    assert [(m["seq"], m["payload"]) for m in peeked] == [(2, {"i": 1}), (3, {"i": 2}), (4, {"i": 3})]
    assert await call(conn, "peek_messages", channel="jobs", after_seq=5) == []
    states = await conn.fetch("select state, attempts from distributed_messages")
    assert {(r["state"], r["attempts"]) for r in states} == {("ready", 0)}
    await expect_error("AR405", call(conn, "peek_messages", channel="nope"))
    await expect_error("AR400", call(conn, "peek_messages", channel="jobs", limit=0))


async def test_peek_is_for_trusted_callers_only(conn: asyncpg.Connection) -> None:
    """Neither an agent's own token nor anon may execute it (42501); the service role may."""
    await register(conn, "a1")
    await call(conn, "ensure_channel", agent_id="a1", name="news", kind="broadcast")
    async with acting_as(conn, "a1"):
        await expect_error("42501", call(conn, "peek_messages", channel="news"))
    async with acting_as(conn, None, role="anon"):
        await expect_error("42501", call(conn, "peek_messages", channel="news"))
    async with acting_as(conn, None, role="service_role"):
        assert await call(conn, "peek_messages", channel="news") == []

"""claim_messages (and fetch_messages) and a sender whose commit they see although it started later.

A claim made right after a wake-up must get the message it was woken for. Its transaction's now() is
not a bound on the senders it can see (a consumer once found now() 9 ms earlier than the visible_at of
a message its snapshot held, skipped it, and waited for the next safety poll), so the claim compares
visible_at with the clock it reads while running. Here the claim's transaction begins before the send
(read committed: its next statement still sees the commit), which is that case made deterministic."""

from __future__ import annotations

import asyncpg

from tests.sql._helpers import call, connections, register, send


async def _setup(conn: asyncpg.Connection) -> None:
    for agent in ("p1", "c1"):
        await register(conn, agent)
    await call(conn, "ensure_channel", agent_id="p1", name="jobs", kind="queue")


async def test_claim_gets_a_message_committed_after_its_transaction_began(conn: asyncpg.Connection,
                                                                          db_url: str) -> None:
    await _setup(conn)
    async with connections(db_url, 1) as (claimer,), claimer.transaction():
        began = await claimer.fetchval("select now()")
        sent = await send(conn, "p1", "jobs", {"n": 1})
        visible_at = await conn.fetchval("select visible_at from distributed_messages where id = $1", sent["id"])
        assert visible_at > began  # the send started after the claim's transaction
        claimed = await call(claimer, "claim_messages", agent_id="c1", channel="jobs")
    assert [m["id"] for m in claimed] == [sent["id"]]


async def test_claim_gets_a_message_nacked_without_delay_after_its_transaction_began(
        conn: asyncpg.Connection, db_url: str) -> None:
    await _setup(conn)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    assert [m["id"] for m in await call(conn, "claim_messages", agent_id="c1", channel="jobs")] == [sent["id"]]
    async with connections(db_url, 1) as (claimer,), claimer.transaction():
        await claimer.fetchval("select now()")
        await call(conn, "nack_message", agent_id="c1", message_id=sent["id"], delay_ms=0)
        claimed = await call(claimer, "claim_messages", agent_id="c1", channel="jobs")
    assert [(m["id"], m["attempts"]) for m in claimed] == [(sent["id"], 2)]


async def test_fetch_gets_a_broadcast_retry_nacked_without_delay_after_its_transaction_began(
        conn: asyncpg.Connection, db_url: str) -> None:
    """The same for a broadcast subscriber: its head-of-line retry (retry_at, the nacker's now()) is due."""
    await register(conn, "p1")
    await register(conn, "s1")
    await call(conn, "ensure_channel", agent_id="p1", name="news")
    await call(conn, "subscribe_channel", agent_id="s1", channel="news")
    sent = await send(conn, "p1", "news", {"n": 1})
    assert [m["id"] for m in await call(conn, "fetch_messages", agent_id="s1", channel="news")] == [sent["id"]]
    async with connections(db_url, 1) as (fetcher,), fetcher.transaction():
        await fetcher.fetchval("select now()")
        await call(conn, "nack_message", agent_id="s1", message_id=sent["id"], delay_ms=0)
        fetched = await call(fetcher, "fetch_messages", agent_id="s1", channel="news")
    assert [(m["id"], m["attempts"]) for m in fetched] == [(sent["id"], 2)]

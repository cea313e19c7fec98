"""Queue and inbox delivery: claim_messages, ack_messages, nack_message, extend_visibility,
list_dead_letters and replay_dead_letters on competing-consumer channels."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from agent_runtime.testing import AdvanceClock
from tests.sql._helpers import call, connections, count, expect_error, refused_unchanged, register, send


async def _setup(conn: asyncpg.Connection, **channel: Any) -> None:
    for agent in ("p1", "c1", "c2"):
        await register(conn, agent)
    await call(conn, "ensure_channel", agent_id="p1", name="jobs", kind="queue", **channel)


async def _state(conn: asyncpg.Connection, message_id: int) -> asyncpg.Record:
    return await conn.fetchrow(
        "select state, attempts, claimed_by, last_error from distributed_messages where id = $1", message_id
    )


async def test_claim_in_seq_order_and_ack(conn: asyncpg.Connection) -> None:
    """Claims hand out messages in seq order up to the limit; acked messages are never handed out again."""
    await _setup(conn)
    ids = [(await send(conn, "p1", "jobs", {"n": i}))["id"] for i in range(5)]
    first = await call(conn, "claim_messages", agent_id="c1", channel="jobs", limit=3)
    assert [m["id"] for m in first] == ids[:3]
    assert all(m["attempts"] == 1 and m["channel"] == "jobs" for m in first)
    assert await call(conn, "ack_messages", agent_id="c1", message_ids=[m["id"] for m in first]) == 3
    rest = await call(conn, "claim_messages", agent_id="c2", channel="jobs", limit=10)
    assert [m["id"] for m in rest] == ids[3:]
    assert await call(conn, "claim_messages", agent_id="c1", channel="jobs") == []
    assert (await _state(conn, ids[0]))["state"] == "acked"


async def test_claimed_message_is_invisible_to_others(conn: asyncpg.Connection) -> None:
    """While one consumer holds a message under its visibility timeout nobody else can claim it."""
    await _setup(conn)
    await send(conn, "p1", "jobs", {"n": 1})
    assert len(await call(conn, "claim_messages", agent_id="c1", channel="jobs")) == 1
    assert await call(conn, "claim_messages", agent_id="c2", channel="jobs") == []


async def test_visibility_timeout_makes_message_claimable_again(conn: asyncpg.Connection,
                                                                advance_clock: AdvanceClock) -> None:
    """When a claim's visibility timeout passes (database clock) another consumer can claim it, attempts+1."""
    await _setup(conn)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs", visibility_ms=400)
    assert await call(conn, "claim_messages", agent_id="c2", channel="jobs") == []
    await advance_clock(0.5)
    [again] = await call(conn, "claim_messages", agent_id="c2", channel="jobs")
    assert again["id"] == sent["id"] and again["attempts"] == 2
    assert (await _state(conn, sent["id"]))["claimed_by"] == "c2"


async def test_channel_visibility_timeout_is_the_default(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """Without p_visibility_ms a claim lasts the channel's visibility timeout."""
    await _setup(conn, visibility_timeout_ms=200)
    await send(conn, "p1", "jobs", 1)
    before = await conn.fetchval("select clock_timestamp()")
    await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    after = await conn.fetchval("select clock_timestamp()")
    visible_at = await conn.fetchval("select visible_at from distributed_messages")
    # (the visibility runs from the clock at the claim, clock_timestamp(), not the transaction's start)
    assert before.timestamp() + 0.2 <= visible_at.timestamp() <= after.timestamp() + 0.2
    await advance_clock(0.3)
    assert len(await call(conn, "claim_messages", agent_id="c2", channel="jobs")) == 1


async def test_stale_ack_after_redelivery_is_ignored(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """An ack from a consumer whose claim timed out and was handed to another counts for nothing."""
    await _setup(conn)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs", visibility_ms=150)
    await advance_clock(0.25)
    await call(conn, "claim_messages", agent_id="c2", channel="jobs")
    assert await call(conn, "ack_messages", agent_id="c1", message_ids=[sent["id"]]) == 0
    assert (await _state(conn, sent["id"]))["state"] == "inflight"
    assert await call(conn, "ack_messages", agent_id="c2", message_ids=[sent["id"]]) == 1
    assert (await _state(conn, sent["id"]))["state"] == "acked"


async def test_extend_visibility(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """extend_visibility keeps a claim past its original timeout; only the holder may extend it."""
    await _setup(conn)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs", visibility_ms=400)
    assert await call(conn, "extend_visibility", agent_id="c2", message_ids=[sent["id"]], visibility_ms=5000) == 0
    assert await call(conn, "extend_visibility", agent_id="c1", message_ids=[sent["id"]], visibility_ms=5000) == 1
    await advance_clock(0.5)
    assert await call(conn, "claim_messages", agent_id="c2", channel="jobs") == []
    await expect_error("AR400", call(conn, "extend_visibility", agent_id="c1", message_ids=[sent["id"]],
                                     visibility_ms=50))


async def test_nack_redelivers_after_delay(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """A nacked message is claimable again only after its retry delay, with the reason kept."""
    await _setup(conn)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    result = await call(conn, "nack_message", agent_id="c1", message_id=sent["id"], delay_ms=400, reason="boom")
    assert result["state"] == "retry" and result["attempts"] == 1
    assert await conn.fetchval("select $1::text::timestamptz > now()", result["retry_at"])
    assert await call(conn, "claim_messages", agent_id="c2", channel="jobs") == []
    await advance_clock(0.5)
    [again] = await call(conn, "claim_messages", agent_id="c2", channel="jobs")
    assert again["id"] == sent["id"] and again["attempts"] == 2
    assert (await _state(conn, sent["id"]))["last_error"] == "boom"


async def test_nack_by_non_holder_is_ignored(conn: asyncpg.Connection) -> None:
    """A nack from an agent that does not hold the message is 'ignored' and changes nothing."""
    await _setup(conn)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    before = await _state(conn, sent["id"])
    assert (await call(conn, "nack_message", agent_id="c2", message_id=sent["id"]))["state"] == "ignored"
    assert await _state(conn, sent["id"]) == before
    await refused_unchanged(conn, "AR406", "nack_message", agent_id="c1", message_id=999999)
    await refused_unchanged(conn, "AR400", "nack_message", agent_id="c1", message_id=sent["id"], delay_ms=-5)


async def test_max_attempts_dead_list_and_replay(conn: asyncpg.Connection) -> None:
    """After max attempts a nacked message is dead, listed as a dead letter, and replay makes it claimable."""
    await _setup(conn, max_attempts=2)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    assert (await call(conn, "nack_message", agent_id="c1", message_id=sent["id"]))["state"] == "retry"
    await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    dead = await call(conn, "nack_message", agent_id="c1", message_id=sent["id"], reason="bad input")
    assert dead == {"state": "dead", "attempts": 2}
    assert await call(conn, "claim_messages", agent_id="c2", channel="jobs") == []
    [letter] = await call(conn, "list_dead_letters", channel="jobs")
    assert letter["id"] == sent["id"] and letter["reason"] == "bad input" and letter["attempts"] == 2
    assert letter["subscriber_id"] is None and letter["payload"] == {"n": 1}
    assert await call(conn, "list_dead_letters", channel="agent:c1") == []

    assert await call(conn, "replay_dead_letters", agent_id="c2", message_ids=[sent["id"]]) == 1
    assert await call(conn, "list_dead_letters") == []
    [again] = await call(conn, "claim_messages", agent_id="c2", channel="jobs")
    assert again["id"] == sent["id"] and again["attempts"] == 1
    # Replaying something that is not dead does nothing.
    assert await call(conn, "replay_dead_letters", agent_id="c2", message_ids=[sent["id"]]) == 0


async def test_replay_revives_an_expired_dead_message(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """Replaying a dead message whose TTL has passed makes it claimable (its expiry is lifted)."""
    await _setup(conn)
    sent = await send(conn, "p1", "jobs", {"n": 1}, ttl_ms=400)
    assert len(await call(conn, "claim_messages", agent_id="c1", channel="jobs")) == 1
    await call(conn, "nack_message", agent_id="c1", message_id=sent["id"], dead=True)
    await advance_clock(0.5)
    assert await call(conn, "cleanup_expired_messages") == 0  # dead letters are kept for a user to see
    assert await call(conn, "replay_dead_letters", agent_id="c1", message_ids=[sent["id"]]) == 1
    [again] = await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    assert again["id"] == sent["id"] and again["expires_at"] is None


async def test_release_hands_back_without_using_an_attempt(conn: asyncpg.Connection) -> None:
    """nack with p_release returns a prefetched claim at once without counting it, so it never dead-letters."""
    await _setup(conn, max_attempts=1)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    for _ in range(3):
        [claimed] = await call(conn, "claim_messages", agent_id="c1", channel="jobs")
        assert claimed["attempts"] == 1
        result = await call(conn, "nack_message", agent_id="c1", message_id=sent["id"], release=True)
        assert result["state"] == "retry" and result["attempts"] == 0
    state = await _state(conn, sent["id"])
    assert (state["state"], state["attempts"], state["claimed_by"]) == ("ready", 0, None)
    # Only the holder can hand it back; p_dead wins over p_release.
    await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    assert (await call(conn, "nack_message", agent_id="c2", message_id=sent["id"], release=True))["state"] == "ignored"
    dead = await call(conn, "nack_message", agent_id="c1", message_id=sent["id"], release=True, dead=True)
    assert dead["state"] == "dead"


async def test_nack_dead_immediately(conn: asyncpg.Connection) -> None:
    """nack with p_dead sends the message to the dead letters at once, whatever its attempts."""
    await _setup(conn, max_attempts=10)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs")
    assert (await call(conn, "nack_message", agent_id="c1", message_id=sent["id"], dead=True))["state"] == "dead"
    assert (await _state(conn, sent["id"]))["state"] == "dead"


async def test_timed_out_claim_at_max_attempts_dies(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """A claim that times out after the last attempt is dead at the next claim, not redelivered."""
    await _setup(conn, max_attempts=1)
    sent = await send(conn, "p1", "jobs", {"n": 1})
    await call(conn, "claim_messages", agent_id="c1", channel="jobs", visibility_ms=150)
    await advance_clock(0.25)
    assert await call(conn, "claim_messages", agent_id="c2", channel="jobs") == []
    state = await _state(conn, sent["id"])
    assert state["state"] == "dead" and state["last_error"] == "visibility timeout" and state["claimed_by"] is None


async def test_a_claim_fills_its_batch_past_the_spent_claims_it_meets(conn: asyncpg.Connection,
                                                                      advance_clock: AdvanceClock) -> None:
    """Spent timed-out claims at the head of the queue die where the claim meets them, and the claim
    goes on past them: a full batch of the messages after them, in seq order (no sweep of the queue)."""
    await _setup(conn, max_attempts=1)
    ids = [(await send(conn, "p1", "jobs", {"n": i}))["id"] for i in range(6)]
    await call(conn, "claim_messages", agent_id="c1", channel="jobs", limit=2, visibility_ms=150)
    await advance_clock(0.25)
    got = await call(conn, "claim_messages", agent_id="c2", channel="jobs", limit=3)
    assert [m["id"] for m in got] == ids[2:5] and all(m["attempts"] == 1 for m in got)
    assert [(await _state(conn, i))["state"] for i in ids] == ["dead", "dead", "inflight", "inflight", "inflight",
                                                                 "ready"]


async def test_dead_letters_are_newest_first_and_limited(conn: asyncpg.Connection) -> None:
    """list_dead_letters orders newest first, honours the limit, and refuses a bad limit or channel."""
    await _setup(conn)
    ids = [(await send(conn, "p1", "jobs", {"n": i}))["id"] for i in range(3)]
    for mid in ids:
        await call(conn, "claim_messages", agent_id="c1", channel="jobs", limit=1)
        await call(conn, "nack_message", agent_id="c1", message_id=mid, dead=True)
    letters = await call(conn, "list_dead_letters", channel="jobs", limit=2)
    assert [m["id"] for m in letters] == [ids[2], ids[1]]
    await expect_error("AR400", call(conn, "list_dead_letters", limit=0))
    await expect_error("AR405", call(conn, "list_dead_letters", channel="nope"))


async def test_concurrent_claims_never_share_a_message(db_url: str, conn: asyncpg.Connection) -> None:
    """Consumers claiming concurrently from several connections never get the same message, and get all."""
    await _setup(conn)
    consumers = [f"w{i}" for i in range(6)]
    for agent in consumers:
        await register(conn, agent)
    await call(conn, "send_messages", agent_id="p1", channel="jobs", messages=[{"payload": i} for i in range(120)])

    async def drain(c: asyncpg.Connection, agent: str) -> list[int]:
        got: list[int] = []
        while batch := await call(c, "claim_messages", agent_id=agent, channel="jobs", limit=4):
            got.extend(m["id"] for m in batch)
        return got

    async with connections(db_url, len(consumers)) as conns:
        results = await asyncio.gather(*(drain(c, a) for c, a in zip(conns, consumers, strict=True)))
    claimed = [mid for r in results for mid in r]
    assert len(claimed) == len(set(claimed)) == 120
    assert sum(1 for r in results if r) > 1  # several consumers really competed
    assert await count(conn, "distributed_messages", "attempts <> 1") == 0


async def test_claim_refusals(conn: asyncpg.Connection) -> None:
    """Claiming a broadcast channel is AR412, an unknown channel AR405, a bad limit or visibility AR400."""
    await _setup(conn)
    await call(conn, "ensure_channel", agent_id="p1", name="news")
    await send(conn, "p1", "jobs", 1)
    await refused_unchanged(conn, "AR412", "claim_messages", agent_id="c1", channel="news")
    await refused_unchanged(conn, "AR405", "claim_messages", agent_id="c1", channel="nope")
    await refused_unchanged(conn, "AR400", "claim_messages", agent_id="c1", channel="jobs", limit=0)
    await refused_unchanged(conn, "AR400", "claim_messages", agent_id="c1", channel="jobs", limit=10001)
    await refused_unchanged(conn, "AR400", "claim_messages", agent_id="c1", channel="jobs", visibility_ms=99)
    await refused_unchanged(conn, "AR400", "ack_messages", agent_id="c1", message_ids=None)
    await refused_unchanged(conn, "AR400", "replay_dead_letters", agent_id="c1", message_ids=None)

"""Broadcast wake-ups that carry their messages (migration messages_in_wakeups): what qualifies,
that the messages are exactly what fetch_messages returns, that every wake-up fits pg_notify,
and that the functions which keep generic plans stay on their indexes."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from agent_runtime.transports import wire
from tests.sql._helpers import call, listening, realtime_payloads, register

BARE_KEYS = {"c", "s", "t", "e"}


async def _setup(conn: asyncpg.Connection) -> None:
    await register(conn, "a1")
    await register(conn, "b1")
    await call(conn, "ensure_channel", agent_id="a1", name="news")
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")
    await call(conn, "subscribe_channel", agent_id="b1", channel="news", **{"from": "earliest"})


async def test_small_batch_carries_its_messages_exactly_as_fetch_returns_them(
        db_url: str, conn: asyncpg.Connection) -> None:
    """A few small messages visible now: the wake-up carries them (f: first seq, m: messages), and
    'm' is what fetch_messages returns for them (same documents, attempts 1); Realtime gets the same."""
    await _setup(conn)
    messages = [
        {"payload": {"n": 1, "text": "héllo"}, "headers": {"k": [1, 2]}},
        {"payload": None, "correlation_id": "8f7c2b36-3c52-4a5e-9bd1-2f0e6c1d4a10", "reply_to": "agent:a1"},
        {"payload": [1.5, "x"], "ttl_ms": 60000},
    ]
    async with listening(db_url, "channel:news") as listener:
        sent = await call(conn, "send_messages", agent_id="a1", channel="news", messages=messages)
        [event] = await listener.settle(conn)
    fetched = await call(conn, "fetch_messages", agent_id="b1", channel="news")
    assert {k: event[k] for k in ("c", "s", "f", "t", "e")} == {
        "c": "news", "s": 3, "f": 1, "t": "channel:news", "e": "message"}
    carried = json.loads(event["m"])  # (one JSON text: its HMAC, 'h', covers exactly these bytes)
    assert carried == fetched
    assert [m["id"] for m in carried] == [r["id"] for r in sent]
    assert [m["attempts"] for m in carried] == [1, 1, 1]
    assert carried[1]["correlation_id"] == messages[1]["correlation_id"]
    assert carried[2]["expires_at"] is not None

    async def again() -> None:
        await call(conn, "send_messages", agent_id="a1", channel="news", messages=messages[:1])
    [broadcast] = await realtime_payloads(db_url, conn, again)
    assert broadcast["topic"] == "channel:news" and broadcast["private"] is True
    payload = broadcast["payload"]
    assert (payload["c"], payload["s"], payload["f"]) == ("news", 4, 4)
    assert json.loads(payload["m"]) == (await call(conn, "fetch_messages", agent_id="b1", channel="news"))[3:]


@pytest.mark.parametrize("case", ["seventeen", "big payload", "big headers", "queue", "inbox"])
async def test_wakeup_is_a_bare_hint_unless_the_batch_qualifies(
        db_url: str, conn: asyncpg.Connection, case: str) -> None:
    """Messages ride along only on a broadcast channel (where a delay is refused), at most 16 of
    them, under 6000 bytes of JSON: anything else is the bare hint {c, s}."""
    await _setup(conn)
    channel, messages = {
        "seventeen": ("news", [{"payload": n} for n in range(17)]),
        "big payload": ("news", [{"payload": "x" * 5990}]),
        "big headers": ("news", [{"payload": 1, "headers": {"h": "y" * 6000}}]),
        "queue": ("jobs", [{"payload": 1}]),
        "inbox": ("agent:b1", [{"payload": 1}]),
    }[case]
    async with listening(db_url, wire.channel_topic(channel)) as listener:
        await call(conn, "send_messages", agent_id="a1", channel=channel, messages=messages)
        [event] = await listener.settle(conn)
    assert set(event) == BARE_KEYS
    assert event["c"] == channel and event["s"] == len(messages)


async def test_every_wakeup_fits_pg_notify(db_url: str, conn: asyncpg.Connection) -> None:
    """Batches of 1 to 16 messages whose JSON is just under the cap are carried, and every
    notification (ours and realtime.send's) stays well under pg_notify's 8000 bytes."""
    await _setup(conn)
    channel = f"n{'x' * 120}"  # a long name: long topics, and long messages
    await call(conn, "ensure_channel", agent_id="a1", name=channel)
    await call(conn, "subscribe_channel", agent_id="b1", channel=channel)
    await call(conn, "send_messages", agent_id="a1", channel=channel, messages=[{"payload": "", "headers": {"i": 1}}])
    [probe] = await call(conn, "fetch_messages", agent_id="b1", channel=channel)
    # A message's document besides its payload, with room for what varies from the probe's: ids,
    # seqs and header values a digit or two longer, timestamps whose trailing zeros are not printed.
    overhead = len(json.dumps(probe, separators=(",", ":")).encode()) + 12
    sizes: list[int] = []
    carried = 0
    for n in range(1, 17):
        text = "z" * max(1, (5950 - overhead * n) // n)  # just under 6000 bytes of JSON in all

        async def batch(n: int = n, text: str = text) -> None:
            await call(conn, "send_messages", agent_id="a1", channel=channel,
                       messages=[{"payload": text, "headers": {"i": i}} for i in range(n)])

        async with listening(db_url, f"channel:{channel}") as listener:
            realtime = await realtime_payloads(db_url, conn, batch)
            events = await listener.settle(conn)
        [event] = events
        carried += "m" in event
        sizes.append(len(json.dumps(event).encode()))
        sizes += [len(json.dumps(r).encode()) for r in realtime]
    assert carried >= 14, carried
    assert max(sizes) < 7500


async def test_plans_cached_on_empty_tables_stay_on_their_indexes(db_url: str, conn: asyncpg.Connection) -> None:
    """fetch_messages, ack_messages and send_messages keep generic plans: a session that planned them
    while the tables were empty must not scan a table that has grown since (index tuples read by a
    fetch of 10 with acks and a send stay small)."""
    await _setup(conn)
    session = await asyncpg.connect(db_url)
    try:
        for _ in range(8):  # plans made (and kept) on empty tables
            await session.fetchval("select fetch_messages('b1', 'news', 10, array[1]::bigint[])")
            await session.fetchval("select send_messages('a1', 'jobs', '[]'::jsonb)")
            await session.fetchval("select ack_messages('b1', array[1]::bigint[])")
        for _ in range(10):
            await call(conn, "send_messages", agent_id="a1", channel="news",
                       messages=[{"payload": n} for n in range(1000)])
        await conn.execute("select pg_stat_force_next_flush()")

        async def tuples_read() -> int:
            await asyncio.sleep(0.05)
            await conn.execute("select pg_stat_clear_snapshot()")
            return int(await conn.fetchval(
                "select coalesce(sum(idx_tup_read), 0) + (select coalesce(seq_tup_read, 0) from pg_stat_user_tables"
                " where relname = 'distributed_messages') from pg_stat_user_indexes"
                " where relname = 'distributed_messages'"))

        before = await tuples_read()
        got = json.loads(await session.fetchval("select fetch_messages('b1', 'news', 10)::text"))
        ids = [m["id"] for m in got]
        await session.fetchval("select fetch_messages('b1', 'news', 10, $1::bigint[])", [ids[-1]])
        await session.fetchval("select ack_messages('b1', $1::bigint[])", ids)
        await session.fetchval("select send_messages('a1', 'news', '[{\"payload\": 1}]'::jsonb)")
        await session.execute("select pg_stat_force_next_flush()")
        read = await tuples_read() - before
    finally:
        await session.close()
    assert len(ids) == 10
    assert read < 500, read  # a scan of the grown table would read ~10,000


async def test_an_inbox_wakeup_carries_replies_which_are_acked_without_a_claim(
        db_url: str, conn: asyncpg.Connection) -> None:
    """A batch of replies to an inbox rides along its wake-up (on the inbox's own topic), as
    claim_messages would return it; its owner acks it without claiming it (it was never claimed),
    nobody else can, and a claimed-then-released reply or a plain message is not acked that way."""
    await _setup(conn)
    await register(conn, "c1")
    reply = {"payload": {"ok": 1}, "headers": {"ar": "reply"}, "correlation_id": "8f7c2b36-3c52-4a5e-9bd1-2f0e6c1d4a10"}
    async with listening(db_url, "agent:b1") as listener:
        [sent] = await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[reply])
        [event] = await listener.settle(conn)
    assert (event["t"], event["c"], event["f"]) == ("agent:b1", "agent:b1", sent["seq"])
    [carried] = json.loads(event["m"])
    assert carried["id"] == sent["id"] and carried["correlation_id"] == reply["correlation_id"]
    assert await call(conn, "ack_messages", agent_id="c1", message_ids=[sent["id"]]) == 0  # not c1's inbox
    assert await call(conn, "ack_messages", agent_id="b1", message_ids=[sent["id"]], channel="agent:b1") == 1
    assert await call(conn, "claim_messages", agent_id="b1", channel="agent:b1") == []
    [plain] = await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[{"payload": 2}])
    assert await call(conn, "ack_messages", agent_id="b1", message_ids=[plain["id"]]) == 0  # plain: claim it
    [again] = await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[reply])
    [claimed] = await call(conn, "claim_messages", agent_id="b1", channel="agent:b1", classes=["reply"])
    await call(conn, "nack_message", agent_id="b1", message_id=claimed["id"], delay_ms=0)
    assert claimed["id"] == again["id"]
    assert await call(conn, "ack_messages", agent_id="b1", message_ids=[again["id"]]) == 0  # claimed once: stale


async def test_a_batch_with_idempotency_keys_wakes_for_what_it_sent(db_url: str, conn: asyncpg.Connection) -> None:
    """send_messages sends its own wake-up (no trigger): with keys, it carries only the messages
    sent now (a duplicate is not sent again, so not carried again), and a batch of duplicates
    only sends no wake-up at all."""
    await _setup(conn)

    def keyed(*keys: str) -> list[dict[str, object]]:
        return [{"payload": {"k": k}, "idempotency_key": k} for k in keys]

    async with listening(db_url, "channel:news") as listener:
        first = await call(conn, "send_messages", agent_id="a1", channel="news", messages=keyed("a", "b"))
        [event] = await listener.settle(conn)
        assert (event["s"], event["f"]) == (2, 1)
        assert [m["id"] for m in json.loads(event["m"])] == [r["id"] for r in first]

        again = await call(conn, "send_messages", agent_id="a1", channel="news", messages=keyed("a", "c", "c"))
        [event] = await listener.settle(conn)
        assert [r["duplicate"] for r in again] == [True, False, True]
        assert (event["s"], event["f"]) == (3, 3)
        [carried] = json.loads(event["m"])
        assert carried["id"] == again[1]["id"] and carried["payload"] == {"k": "c"}

        await call(conn, "send_messages", agent_id="a1", channel="news", messages=keyed("b", "c"))
        assert await listener.settle(conn) == []

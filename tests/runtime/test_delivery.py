"""Delivery semantics through the runtime: handlers, retries, dead letters, competing consumers,
typed payloads, idempotency keys and durable resume."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import msgspec

from agent_runtime import AgentRuntime
from agent_runtime.testing import AdvanceClock

RuntimeFactory = Callable[..., AgentRuntime]


class Task(msgspec.Struct):
    id: int
    title: str


async def test_typed_subscription_decodes_and_dead_letters_invalid_payloads(make_runtime: RuntimeFactory) -> None:
    """A typed subscription decodes Structs; a bad payload is dead-lettered with its reason and the next arrives."""
    async with make_runtime("pub") as pub, make_runtime("sub") as sub:
        await pub.channel("typed")
        async with sub.subscribe("typed", type=Task) as s:
            await pub.publish("typed", Task(1, "first"))
            bad = await pub.publish("typed", {"id": "not-a-number"})
            await pub.publish("typed", {"id": 3, "title": "third"})
            got: list[Task] = []
            with anyio.fail_after(5):
                async for msg in s:
                    assert isinstance(msg.payload, Task)
                    got.append(msg.payload)
                    await msg.ack()
                    if len(got) == 2:
                        break
            assert got == [Task(1, "first"), Task(3, "third")]
        [dead] = await sub.dead_letters("typed")
        assert dead.id == bad.id
        assert dead.subscriber_id == sub.agent_id
        assert dead.reason is not None and "Task" in dead.reason


async def test_typed_queue_handler_dead_letters_invalid_payload(make_runtime: RuntimeFactory) -> None:
    """On a queue, an undecodable payload goes straight to the dead letters and the handler goes on."""
    async with make_runtime("w") as rt:
        await rt.channel("typed-q", "queue", max_attempts=5)
        seen: list[Task] = []
        both = anyio.Event()

        @rt.on("typed-q", type=Task, kind="queue")
        async def handle(msg: Any) -> None:
            seen.append(msg.payload)
            if len(seen) == 2:
                both.set()

        bad = await rt.publish("typed-q", {"title": "no id"})
        await rt.publish_many("typed-q", [Task(1, "a"), Task(2, "b")])
        with anyio.fail_after(5):
            await both.wait()
        assert seen == [Task(1, "a"), Task(2, "b")]
        [dead] = await rt.dead_letters("typed-q")
        assert dead.id == bad.id and dead.attempts == 1  # dead at once, not after 5 attempts
        assert dead.reason is not None and "id" in dead.reason


async def test_idempotency_key_makes_a_resend_a_no_op(make_runtime: RuntimeFactory) -> None:
    """Publishing twice with one key returns duplicate=True and the subscriber sees one message."""
    async with make_runtime("pub") as pub, make_runtime("sub") as sub:
        await pub.channel("orders")
        async with sub.subscribe("orders") as s:
            first = await pub.publish("orders", {"order": 1}, idempotency_key="order-1")
            second = await pub.publish("orders", {"order": 1}, idempotency_key="order-1")
            assert not first.duplicate and second.duplicate
            assert second.id == first.id
            await pub.publish("orders", {"order": 2}, idempotency_key="order-2")
            got = []
            with anyio.fail_after(5):
                async for msg in s:
                    got.append(msg.payload["order"])
                    await msg.ack()
                    if msg.payload["order"] == 2:
                        break
            assert got == [1, 2]


async def test_durable_subscription_resumes_with_exactly_the_missed_messages(
        make_runtime: RuntimeFactory) -> None:
    """An agent that leaves and comes back with the same id receives exactly what it did not ack."""
    async with make_runtime("pub") as pub:
        await pub.channel("feed")
        async with make_runtime("reader", agent_id="reader-1") as reader:
            async with reader.subscribe("feed") as s:
                await pub.publish_many("feed", [{"n": n} for n in range(6)])
                with anyio.fail_after(5):
                    async for msg in s:
                        await msg.ack()
                        if msg.payload["n"] == 2:
                            break  # 0..2 acked; 3..5 fetched but never handled
        await pub.publish_many("feed", [{"n": n} for n in range(6, 10)])  # while it is away
        async with make_runtime("reader", agent_id="reader-1") as reader:
            assert reader.info is not None and reader.info.resumed
            got: list[int] = []
            async with reader.subscribe("feed") as s:
                with anyio.fail_after(5):
                    async for msg in s:
                        got.append(msg.payload["n"])
                        await msg.ack()
                        if len(got) == 7:
                            break
                await pub.publish("feed", {"n": 10})
                with anyio.fail_after(5):
                    nxt = await s.__anext__()
                assert nxt.payload["n"] == 10  # nothing else was pending
            assert got == [3, 4, 5, 6, 7, 8, 9]


async def test_metrics_are_flushed_and_read_back(make_runtime: RuntimeFactory) -> None:
    """After traffic and flush_metrics, read_metrics shows sent, received, acked and custom counters."""
    async with make_runtime("pub", metrics_interval=60) as pub, make_runtime("sub", metrics_interval=60) as sub:
        await pub.channel("m")
        async with sub.subscribe("m") as s:
            await pub.publish_many("m", [{"n": n} for n in range(4)])
            with anyio.fail_after(5):
                n = 0
                async for msg in s:
                    await msg.ack()
                    n += 1
                    if n == 4:
                        break
        sub.metrics.increment("my.metric", 3)
        await pub.flush_metrics()
        await sub.flush_metrics()

        def figure(rows: list[Any], agent: str, metric: str, channel: str = "m") -> tuple[int, float]:
            [row] = [r for r in rows if (r.agent_id, r.metric, r.channel) == (agent, metric, channel)]
            return row.count, row.sum

        rows = await pub.read_metrics()
        assert figure(rows, pub.agent_id, "messages.sent") == (1, 4)  # one batch of four
        assert figure(rows, sub.agent_id, "messages.received")[0] == 4
        assert figure(rows, sub.agent_id, "messages.acked")[1] == 4
        assert figure(rows, sub.agent_id, "my.metric", "") == (1, 3)
        latency = [r for r in rows if r.metric == "latency.end_to_end_ms" and r.agent_id == sub.agent_id]
        assert latency and latency[0].count == 4 and latency[0].min is not None and latency[0].min >= 0
        # Only this agent's, only that metric:
        mine = await pub.read_metrics(agent_id=sub.agent_id, metric="my.metric")
        assert [(r.metric, r.sum) for r in mine] == [("my.metric", 3)]
        # A second flush adds to the same bucket rather than duplicating rows.
        sub.metrics.increment("my.metric", 2)
        await sub.flush_metrics()
        [again] = await pub.read_metrics(agent_id=sub.agent_id, metric="my.metric")
        assert (again.count, again.sum) == (2, 5)


async def test_late_nack_does_not_undo_another_consumers_claim(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """A nack that races a new claim after the visibility timeout is ignored: the new claimant keeps the message."""
    async with make_runtime("slow") as slow, make_runtime("other") as other:
        await slow.channel("vq", "queue")
        async with slow.subscribe("vq", visibility_timeout=0.2) as sub:
            await slow.publish("vq", {"n": 1})
            with anyio.fail_after(5):
                msg = await sub.__anext__()
            await advance_clock(0.3)  # its visibility timed out: another consumer may claim it now
            tx = conn.transaction()
            await tx.start()
            try:
                claimed = await conn.fetchval("select claim_messages($1, 'vq', 10, null)::text", other.agent_id)
                assert str(msg.id) in claimed
                async with anyio.create_task_group() as tg:
                    result: list[str] = []

                    async def late_nack() -> None:
                        result.append((await msg.nack(delay=0)).state)

                    tg.start_soon(late_nack)
                    await anyio.sleep(0.3)  # the nack now waits for the claim to commit (or got its answer)
                    await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
        assert result == ["ignored"]
        row = await conn.fetchrow("select state, claimed_by from distributed_messages where id = $1", msg.id)
        assert (row["state"], row["claimed_by"]) == ("inflight", other.agent_id)

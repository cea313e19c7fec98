"""A subscription's own error boundary: what the database fails retryably during a claim or fetch
(here a deadlock; a terminated connection: tests/runtime/test_subscription_retry.py) is retried
inside the subscription, counted and logged, and never reaches the application's plain
``async for msg in sub`` loop."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import asyncpg

from agent_runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


async def _lock_waiters(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch("select pid from pg_stat_activity where datname = current_database() "
                            "and pid <> pg_backend_pid() and wait_event_type = 'Lock'")
    return [r["pid"] for r in rows]


def _count(rt: AgentRuntime, metric: str, channel: str) -> float:
    figure = rt.metrics._figures.get((metric, channel))
    return 0 if figure is None else figure.count


async def test_a_claim_that_deadlocks_is_retried_inside_a_plain_subscription_loop(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """The claim that carries a consumer's acks deadlocks with another transaction (Conflict,
    40P01): the consumer's loop goes on and gets the next message; the failure is counted."""
    async with make_runtime("pub") as pub, make_runtime("sub", metrics_interval=3600) as rt:
        await pub.channel("jobs", "queue")
        await pub.publish_many("jobs", [{"n": 0}, {"n": 1}])
        got: list[int] = []
        async with rt.subscribe("jobs", kind="queue", batch_size=2) as sub:
            first, second = await sub.__anext__(), await sub.__anext__()
            low, high = sorted([first.id, second.id])
            tx = conn.transaction()
            await tx.start()
            try:
                # This transaction holds the later message; the consumer's next claim acks both,
                # locking the earlier one first and then waiting for this one...
                await conn.execute("select 1 from distributed_messages where id = $1 for update", high)
                await first.ack()
                await second.ack()
                await pub.publish("jobs", {"n": 2})

                async def consume() -> None:
                    async for msg in sub:
                        got.append(msg.payload["n"])
                        await msg.ack()
                        return

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    with anyio.fail_after(10):
                        while not await _lock_waiters(conn):  # noqa: ASYNC110
                            await anyio.sleep(0.02)
                    # ... and this one now waits for the earlier: a deadlock, which the claim (the
                    # first to wait, so the first to look) loses.
                    await conn.execute("update distributed_messages set attempts = attempts where id = $1", low)
                    await tx.rollback()
                    with anyio.fail_after(10):
                        while not got:  # noqa: ASYNC110
                            await anyio.sleep(0.02)
            finally:
                if conn.is_in_transaction():  # (still open if the test failed before the rollback)
                    await tx.rollback()
        assert got == [2]
        assert _count(rt, "errors.subscription", "jobs") >= 1
        rows = await conn.fetch("select m.state, count(*) as n from distributed_messages m "
                                "join communication_channels c on c.id = m.channel_id where c.name = 'jobs' group by 1")
        assert {r["state"]: r["n"] for r in rows} == {"acked": 3}

"""Calls a subscription makes on its own whose connection is terminated under them (postgres
transport: the Supabase stand-in's own pool hides such a fault from the runtime): a claim is
retried inside the subscription, a dead-lettering is left to redelivery; both are counted, and
the application's plain loop goes on."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import asyncpg

from agent_runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


async def test_a_claim_whose_connection_is_terminated_is_retried_and_counted(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    async with make_runtime("pub") as pub, make_runtime("sub", metrics_interval=3600) as rt:
        await pub.channel("jobs", "queue")
        await pub.publish_many("jobs", [{"n": 0}, {"n": 1}])
        got: list[int] = []
        async with rt.subscribe("jobs", kind="queue", batch_size=2) as sub:
            first, second = await sub.__anext__(), await sub.__anext__()

            async def consume() -> None:
                async for msg in sub:
                    got.append(msg.payload["n"])
                    await msg.ack()
                    return

            async with anyio.create_task_group() as tg:
                async with conn.transaction():
                    # The consumer's next claim carries both acks and waits for this lock: then its
                    # backend is terminated in the middle of the call.
                    await conn.execute("select 1 from distributed_messages where id = $1 for update", second.id)
                    await first.ack()
                    await second.ack()
                    await pub.publish("jobs", {"n": 2})
                    tg.start_soon(consume)
                    with anyio.fail_after(10):
                        while not await conn.fetchval(  # noqa: ASYNC110
                                "select count(pg_terminate_backend(pid)) from pg_stat_activity where "
                                "datname = current_database() and pid <> pg_backend_pid() "
                                "and wait_event_type = 'Lock'"):
                            await anyio.sleep(0.02)
                # (the transaction has ended: the retried claim is let through)
                with anyio.fail_after(10):
                    while not got:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
        assert got == [2]
        assert rt.metrics._figures[("errors.subscription", "jobs")].count >= 1


async def _terminate_lock_waiters(conn: asyncpg.Connection) -> None:
    with anyio.fail_after(10):
        while not await conn.fetchval(  # noqa: ASYNC110
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where "
                "datname = current_database() and pid <> pg_backend_pid() and wait_event_type = 'Lock'"):
            await anyio.sleep(0.02)


async def test_an_undecodable_payload_whose_dead_lettering_fails_does_not_end_the_loop(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    async with make_runtime("pub") as pub, make_runtime("sub", metrics_interval=3600) as rt:
        await pub.channel("typed", "queue")
        got: list[int] = []
        async with rt.subscribe("typed", kind="queue", type=int, batch_size=2) as sub:
            await pub.publish_many("typed", [5, {"not": "an int"}])
            first = await sub.__anext__()  # (both are claimed)
            assert first.payload == 5
            await first.ack()
            bad = await conn.fetchval("select m.id from distributed_messages m join communication_channels c "
                                      "on c.id = m.channel_id where c.name = 'typed' and m.payload ? 'not'")

            async def consume() -> None:
                async for msg in sub:
                    got.append(msg.payload)
                    await msg.ack()
                    return

            async with anyio.create_task_group() as tg:
                async with conn.transaction():
                    # Dead-lettering the undecodable one waits for this lock, and its connection dies.
                    await conn.execute("select 1 from distributed_messages where id = $1 for update", bad)
                    tg.start_soon(consume)
                    await _terminate_lock_waiters(conn)
                await pub.publish("typed", 7)
                with anyio.fail_after(10):
                    while not got:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
        assert got == [7]
        assert rt.metrics._figures[("errors.nack", "typed")].count == 1
